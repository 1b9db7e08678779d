"""Shards read through ``pipe:`` commands (how object storage is streamed: ``pipe:aws s3 cp s3://... -``)."""

from __future__ import annotations

from lavinkit.data import ImagePairDataModule


def test_pipe_urls_give_the_same_batches_as_files(demo_data):
    shards = sorted((demo_data / "train").glob("images-*.tar"))
    val = sorted((demo_data / "val").glob("images-*.tar"))
    files = ImagePairDataModule([str(s) for s in shards], [str(s) for s in val], batch_size=2, num_context=1,
                                steps_per_epoch=3, val_batches=2, seed=3, shuffle_buffer=16)
    piped = ImagePairDataModule([f"pipe:cat {s}" for s in shards], [f"pipe:cat {s}" for s in val], batch_size=2,
                                num_context=1, steps_per_epoch=3, val_batches=2, seed=3, shuffle_buffer=16)
    for dm in (files, piped):
        dm.setup("fit")
    for loader in ("train_dataloader", "val_dataloader"):
        a = list(getattr(files, loader)())
        b = list(getattr(piped, loader)())
        assert [x["keys"] for x in a] == [x["keys"] for x in b] and len(a) > 0
        assert all((x["input"] == y["input"]).all() for x, y in zip(a, b))
