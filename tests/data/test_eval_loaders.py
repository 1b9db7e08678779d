"""test/predict loaders: ``test_urls`` (default: the validation urls) read with the validation policy."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import webdataset as wds

from lavinkit.data import (
    ImagePairDataModule,
    LatentPairDataModule,
    MixtureDataModule,
    VideoPairDataModule,
)


class KeyRecorder(pl.LightningModule):
    """Records the keys of every test/predict batch; no training."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.keys = []

    def test_step(self, batch, batch_idx):
        self.keys.append(batch["keys"])
        self.log("test/mean", batch["input"].mean() - self.w, batch_size=len(batch["task"]))

    def predict_step(self, batch, batch_idx):
        return batch["keys"]


def trainer(tmp_path):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def write_latents(folder):
    rng = np.random.default_rng(0)
    folder.mkdir(exist_ok=True)
    with wds.TarWriter(str(folder / "latents-000000.tar")) as w:
        for task in ("a", "b"):
            for i in range(6):
                z = rng.standard_normal((2, 4, 3, 2, 2)).astype(np.float16)
                w.write({"__key__": f"{task}-{i}", "input.npy": z[0], "target.npy": z[1], "json": {"task": task}})
    return folder


def make(kind, demo_data, tmp_path):
    val = demo_data / "val"
    if kind == "image":
        return ImagePairDataModule(None, val / "images-*.tar", batch_size=2, num_context=1)
    if kind == "video":
        return VideoPairDataModule(None, val / "videos-*.tar", batch_size=1, num_context=1, frames=5)
    if kind == "mixture":
        return MixtureDataModule(
            image_val_urls=val / "images-*.tar",
            video_val_urls=val / "videos-*.tar",
            batch_size=2,
            video_batch_size=1,
            num_context=1,
        )
    return LatentPairDataModule(None, write_latents(tmp_path / "latents"), batch_size=2, num_context=1)


@pytest.mark.parametrize("kind", ["image", "video", "mixture", "latent"])
def test_trainer_test_and_predict_read_the_validation_shards(kind, demo_data, tmp_path):
    dm = make(kind, demo_data, tmp_path)
    val_keys = [b["keys"] for b in dm.val_dataloader()]
    assert val_keys

    model = KeyRecorder()
    (result,) = trainer(tmp_path).test(model, datamodule=dm)
    assert "test/mean" in result
    assert model.keys == val_keys  # finite, same policy and order as validation
    assert trainer(tmp_path).predict(model, datamodule=make(kind, demo_data, tmp_path)) == val_keys
    if kind == "mixture":
        assert {len(k) for b in model.keys for k in b} == {2}  # k = 1 everywhere
        assert len({tuple(map(len, b)) for b in model.keys}) == 2  # image batches of 2, clip batches of 1


def test_test_urls_override_the_validation_urls(demo_data, tmp_path):
    shards = sorted(str(p) for p in (demo_data / "val").glob("images-*.tar"))
    dm = ImagePairDataModule(None, shards, shards[:2], batch_size=2, num_context=0)
    test = [b["keys"] for b in dm.test_dataloader()]
    assert test and test != [b["keys"] for b in dm.val_dataloader()]
    assert test == [b["keys"] for b in dm.test_dataloader()]
    alone = ImagePairDataModule(None, shards[:2], batch_size=2, num_context=0)
    assert test == [b["keys"] for b in alone.val_dataloader()]
    assert ImagePairDataModule(demo_data / "train").test_dataloader() == []


def test_missing_test_shard_names_the_option(demo_data, tmp_path):
    dm = ImagePairDataModule(None, demo_data / "val", tmp_path / "none-*.tar")
    with pytest.raises(FileNotFoundError, match="test_urls"):
        dm.test_dataloader()
    dm = MixtureDataModule(image_val_urls=tmp_path / "gone.tar")
    with pytest.raises(FileNotFoundError, match="image_val_urls"):
        dm.test_dataloader()
