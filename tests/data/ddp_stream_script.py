"""Two-process CPU DDP run over uneven shards; each rank writes what it saw to ``<out>/rank<r>.json``.

Usage: ``python ddp_stream_script.py DATA_DIR OUT_DIR`` (DATA_DIR holds ``train/*.tar`` and ``val/*.tar``).
Run by ``tests/data/test_ddp.py`` in a subprocess with a clean environment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from lavinkit.data import ImagePairDataModule, SkippedSamplesLogger


class Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_keys: list = []
        self.val_keys: list = []

    def training_step(self, batch, batch_idx):
        self.train_keys.append([self.current_epoch, batch["num_context"], batch["keys"]])
        return (batch["input"].mean() - self.w) ** 2

    def on_validation_epoch_start(self):
        self.val_keys.append([])

    def validation_step(self, batch, batch_idx):
        self.val_keys[-1].append(batch["keys"])
        loss = (batch["target"].mean() - self.w) ** 2
        self.log("val/loss", loss, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main(data: Path, out: Path) -> None:
    dm = ImagePairDataModule(
        data / "train",
        data / "val",
        batch_size=2,
        num_context=(0, 2),
        steps_per_epoch=5,
        num_workers=1,
        seed=5,
    )
    module = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[SkippedSamplesLogger(every_n_steps=1)],
    )
    trainer.fit(module, datamodule=dm)
    record = {
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "dm_rank": dm._rank,
        "train": module.train_keys,
        "val": module.val_keys,
        "skipped": dm.skipped,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
