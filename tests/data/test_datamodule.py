"""DataModules: batch contract, modalities, url forms, determinism, validation split, YAML construction."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds

from lavinkit.data import (
    ImagePairDataModule,
    LatentMixtureDataModule,
    LatentPairDataModule,
    MixtureDataModule,
    VideoPairDataModule,
    make_sample,
)


def write_image_shards(folder, tasks: dict[str, int], *, shards: int = 2, size: int = 16, seed: int = 0):
    """Pairs of random ``size`` x ``size`` images, task by task, spread round-robin over ``shards`` tars."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    writers = [wds.TarWriter(str(folder / f"pairs-{i:06d}.tar")) for i in range(shards)]
    i = 0
    for task, n in tasks.items():
        for j in range(n):
            img = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
            writers[i % shards].write(make_sample(f"{task}-{j:04d}", task, img[0], img[1]))
            i += 1
    for w in writers:
        w.close()
    return sorted(folder.glob("*.tar"))


def check_contract(batch, *, b, t, hw, k=None, channels=3, latents=False):
    n = batch["num_context"] + 1
    assert set(batch) == {"input", "target", "task", "keys", "num_context"} | (
        {"latents"} if latents else set()
    )
    assert batch["input"].shape == batch["target"].shape == (b, n, channels, t, hw, hw)
    assert batch["input"].dtype == torch.float32
    if not latents:
        assert batch["input"].min() >= -1 and batch["input"].max() <= 1
    assert isinstance(batch["num_context"], int) and (k is None or batch["num_context"] == k)
    assert len(batch["task"]) == b and all(isinstance(t_, str) for t_ in batch["task"])
    assert len(batch["keys"]) == b and all(len(row) == n for row in batch["keys"])


def test_image_contract_and_val(demo_data):
    dm = ImagePairDataModule(
        demo_data / "train" / "images-*.tar",
        demo_data / "val" / "images-{000000..000003}.tar",
        batch_size=3,
        num_context=2,
        steps_per_epoch=3,
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 3
    for batch in batches:
        check_contract(batch, b=3, t=1, hw=32, k=2)
    val = list(dm.val_dataloader())
    assert len(val) == len(dm.val_dataloader()) > 0
    for batch in val:
        check_contract(batch, b=3, t=1, hw=32, k=2)
    assert [b["keys"] for b in val] == [b["keys"] for b in dm.val_dataloader()]  # finite and identical


def test_video_contract_k0_and_resize(demo_data):
    dm = VideoPairDataModule(
        demo_data / "train", batch_size=2, num_context=0, steps_per_epoch=2, size=16, frames=5
    )
    dm.train_urls = [str(p) for p in sorted((demo_data / "train").glob("videos-*.tar"))]
    for batch in dm.train_dataloader():
        check_contract(batch, b=2, t=5, hw=16, k=0)


def test_mixture_batches_are_homogeneous(demo_data):
    dm = MixtureDataModule(
        str(demo_data / "train" / "images-*.tar"),
        str(demo_data / "train" / "videos-*.tar"),
        batch_size=2,
        video_batch_size=1,
        num_context=1,
        steps_per_epoch=12,
        seed=1,
    )
    frames = set()
    for batch in dm.train_dataloader():
        t = batch["input"].shape[3]
        frames.add(t)
        check_contract(batch, b=2 if t == 1 else 1, t=t, hw=32, k=1)
    assert frames == {1, 9}


def test_latent_contract(tmp_path):
    rng = np.random.default_rng(0)
    with wds.TarWriter(str(tmp_path / "latents-000000.tar")) as w:
        for task in ("a", "b"):
            for i in range(6):
                z = rng.standard_normal((2, 4, 3, 2, 2)).astype(np.float16)
                w.write(
                    {
                        "__key__": f"{task}-{i}",
                        "input.npy": z[0],
                        "target.npy": z[1],
                        "json": {"task": task, "vae": "tiny"},
                    }
                )
    dm = LatentPairDataModule(
        tmp_path,
        batch_size=2,
        num_context=1,
        steps_per_epoch=2,
        vae="tiny",
        latent_shift=0.5,
        latent_scale=2.0,
    )
    batch = next(iter(dm.train_dataloader()))
    check_contract(batch, b=2, t=3, hw=2, k=1, channels=4, latents=True)
    assert batch["latents"] is True
    dm = LatentPairDataModule(tmp_path, batch_size=2, num_context=1, steps_per_epoch=2, vae="official")
    with pytest.raises(RuntimeError, match="latents made by VAE 'tiny', the stream expects 'official'"):
        next(iter(dm.train_dataloader()))


def _latent_shard(path, shape, tasks, vae="demo"):
    rng = np.random.default_rng(len(shape))
    with wds.TarWriter(str(path)) as w:
        for task in tasks:
            for i in range(6):
                z = rng.standard_normal((2, *shape)).astype(np.float16)
                w.write({"__key__": f"{task}-{i}", "input.npy": z[0], "target.npy": z[1],
                         "json": {"task": task, "vae": vae}})


def test_latent_mixture_batches_are_all_images_or_all_clips(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "vid").mkdir()
    _latent_shard(tmp_path / "img" / "latents-000000.tar", (4, 1, 2, 2), ("a", "b"))
    _latent_shard(tmp_path / "vid" / "latents-000000.tar", (4, 3, 2, 2), ("clip_a",))
    dm = LatentMixtureDataModule(
        tmp_path / "img", tmp_path / "vid", tmp_path / "img", tmp_path / "vid",
        batch_size=2, video_batch_size=1, num_context=1, steps_per_epoch=12, val_batches=2, vae="demo", seed=0,
    )  # fmt: skip
    seen = set()
    for batch in dm.train_dataloader():
        t = batch["input"].shape[3]
        seen.add(t)
        check_contract(batch, b=2 if t == 1 else 1, t=t, hw=2, k=1, channels=4, latents=True)
        assert (t == 3) == (batch["task"] == ["clip_a"])
    assert seen == {1, 3}
    val = [batch["input"].shape[3] for batch in dm.val_dataloader()]
    assert val == [1, 3]  # the image batches, then the clip batches
    dm = LatentMixtureDataModule(tmp_path / "img", tmp_path / "vid", batch_size=2, num_context=1,
                                 steps_per_epoch=2, vae="official")
    with pytest.raises(RuntimeError, match="the stream expects 'official'"):
        next(iter(dm.train_dataloader()))


def test_same_seed_same_batches_other_seed_differs(demo_data):
    def keys(seed, workers=0):
        dm = ImagePairDataModule(
            demo_data / "train" / "images-*.tar",
            batch_size=2,
            num_context=(1, 2),
            steps_per_epoch=4,
            seed=seed,
            num_workers=workers,
        )
        loader = dm.train_dataloader()
        return [[b["keys"] for b in loader] for _ in range(2)]  # two epochs

    a, b = keys(7), keys(7)
    assert a == b
    assert a[0] != a[1]  # a new epoch reseeds the stream
    assert keys(8) != a
    assert keys(7, workers=1) == a  # one worker plays role 0: the same stream as in-process


def test_url_forms_and_missing_shard(tmp_path):
    files = write_image_shards(tmp_path / "d", {"t": 6}, shards=3)
    forms = [
        str(tmp_path / "d"),
        str(tmp_path / "d" / "*.tar"),
        str(tmp_path / "d" / "pairs-{000000..000002}.tar"),
        [str(f) for f in files],
        "::".join(str(f) for f in files),
    ]
    for urls in forms:
        from lavinkit.data.pipeline import resolve_urls

        assert resolve_urls(urls) == [str(f) for f in files]
    dm = ImagePairDataModule(str(tmp_path / "d" / "pairs-{000000..000004}.tar"), batch_size=1, num_context=1)
    with pytest.raises(FileNotFoundError, match=r"train_urls: shard '.*pairs-000003.tar' does not exist"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="no \\*.tar shards"):
        ImagePairDataModule(tmp_path, batch_size=1).setup("fit")
    assert resolve_urls("pipe:cat x.tar") == ["pipe:cat x.tar"]


def test_val_equal_on_ranks_and_sample_split(tmp_path):
    write_image_shards(tmp_path / "v", {"a": 9, "b": 7, "c": 5}, shards=3)
    seen = {}
    for rank in range(2):
        dm = ImagePairDataModule(val_urls=tmp_path / "v", batch_size=1, num_context=1, num_workers=2)
        dm._resolve_rank = lambda rank=rank: (rank, 2)
        dm.setup("validate")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader = dm.val_dataloader()
        assert any("splitting by sample" in str(w.message) for w in caught)  # 3 shards < 2 ranks x 2 workers
        seen[rank] = [b["keys"][0] for b in loader]
    assert len(seen[0]) == len(seen[1]) > 0
    keys0 = {k for ex in seen[0] for k in ex}
    keys1 = {k for ex in seen[1] for k in ex}
    assert not keys0 & keys1  # sample-level split: ranks read disjoint samples


def test_val_batches_pads_by_repeating(tmp_path):
    write_image_shards(tmp_path / "v", {"a": 4}, shards=1)
    dm = ImagePairDataModule(val_urls=tmp_path / "v", batch_size=1, num_context=1, val_batches=5)
    batches = list(dm.val_dataloader())
    assert len(batches) == 5
    assert batches[0]["keys"] == batches[2]["keys"]  # 2 examples per pass, repeated


def test_index_json_task_too_small_fails_at_setup(demo_data):
    dm = ImagePairDataModule(demo_data / "train" / "images-*.tar", batch_size=1, num_context=12)
    with pytest.raises(ValueError, match=r"fewer pairs than k\+1 = 13 \(index.json\): 'colorization' has 12"):
        dm.setup("fit")


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="size must be a positive multiple of 16"):
        ImagePairDataModule("x.tar", size=40)
    with pytest.raises(ValueError, match="frames must be 1 \\+ 4k"):
        VideoPairDataModule("x.tar", frames=16)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ImagePairDataModule("x.tar", steps_per_epoch=0)


def test_constructed_from_yaml_class_path(tmp_path, demo_data):
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    cfg = json.dumps(
        {
            "data": {
                "class_path": "lavinkit.data.MixtureDataModule",
                "init_args": {
                    "image_train_urls": str(demo_data / "train" / "images-*.tar"),
                    "num_context": [1, 3],
                    "task_weights": {"colorization": 2.0},
                    "steps_per_epoch": 5,
                },
            }
        }
    )
    dm = parser.instantiate_classes(parser.parse_string(cfg)).data
    assert isinstance(dm, MixtureDataModule)
    assert dm.num_context == (1, 3) and dm.task_weights == {"colorization": 2.0}


def test_bench_data_smoke(demo_data, capsys, tmp_path):
    import json
    import time

    from lavinkit.bench.data import main
    from lavinkit.bench.stats import spread

    imgs = str(demo_data / "train" / "images-*.tar")
    args = ["--images", imgs, "--workers", "[0]", "--repeats", "3", "--batches", "2", "--image_batch_size", "2",
            "--min-seconds", "0.2", "--json", str(tmp_path / "rows.json")]
    start = time.perf_counter()
    assert main(args) == 0
    assert time.perf_counter() - start > 3 * 2 * 0.2  # every repeat of both streams read for --min-seconds
    out = capsys.readouterr().out
    assert "image" in out and "overhead" in out and "p10-p90" in out
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    for name in ("grouped", "plain"):
        runs = row[f"{name}_pairs_s_all"]
        assert len(runs) == row["repeats"] == 3
        assert min(runs) <= row[f"{name}_pairs_s_p10"] <= row[f"{name}_pairs_s"] <= row[f"{name}_pairs_s_p90"] <= max(runs)
    s = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["median"] == 3.0 and s["min"] == 1.0 and s["max"] == 5.0 and s["p10"] == pytest.approx(1.4)
    assert s["p90"] == pytest.approx(4.6)


@pytest.mark.timeout(120)
def test_workers_start_after_pyav_used_in_main_process(demo_data):
    """PyAV threads in the parent must not deadlock video workers (the loader switches to forkserver)."""
    from lavinkit.data.media import decode_mp4
    from lavinkit.data.pipeline import SkipLog, raw_samples, resolve_urls

    urls = resolve_urls(demo_data / "train" / "videos-*.tar")
    sample = next(raw_samples([{"url": urls[0]}], SkipLog()))
    for _ in range(3):
        decode_mp4(sample["input.mp4"])
    dm = VideoPairDataModule(urls, batch_size=1, num_context=1, steps_per_epoch=2, num_workers=1)
    assert len(list(dm.train_dataloader())) == 2
