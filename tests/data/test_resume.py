"""Mid-epoch resume: the batches after load_state_dict equal those of an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from lavinkit.data import ImagePairDataModule


def make_dm(demo_data, workers=0, **kw):
    args = dict(batch_size=2, num_context=(0, 2), steps_per_epoch=7, seed=11, num_workers=workers)
    args.update(kw)
    return ImagePairDataModule(demo_data / "train" / "images-*.tar", **args)


def run(loader):
    return [(b["keys"], b["input"]) for b in loader]


def same(a, b):
    assert [k for k, _ in a] == [k for k, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_equals_uninterrupted(demo_data, workers):
    ref_dm = make_dm(demo_data, workers)
    ref_loader = ref_dm.train_dataloader()
    epoch0, epoch1 = run(ref_loader), run(ref_loader)

    dm = make_dm(demo_data, workers)
    it = iter(dm.train_dataloader())
    head = [next(it) for _ in range(3)]
    state = dm.state_dict()
    assert state["epoch"] == 0 and state["consumed"] == 3 and state["seed"] == 11
    same([(b["keys"], b["input"]) for b in head], epoch0[:3])

    resumed = make_dm(demo_data, workers)
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    same(run(loader), epoch0[3:])
    same(run(loader), epoch1)
    assert resumed.state_dict()["epoch"] == 2


def test_resume_at_epoch_end_starts_next_epoch(demo_data):
    dm = make_dm(demo_data)
    loader = dm.train_dataloader()
    run(loader)
    epoch1 = run(loader)
    state = make_dm(demo_data).state_dict()
    assert (state["epoch"], state["consumed"]) == (0, 0)

    dm = make_dm(demo_data)
    run(dm.train_dataloader())
    state = dm.state_dict()
    assert (state["epoch"], state["consumed"]) == (1, 0)
    resumed = make_dm(demo_data)
    resumed.load_state_dict(state)
    same(run(resumed.train_dataloader()), epoch1)


def test_resume_with_other_settings_warns(demo_data):
    dm = make_dm(demo_data)
    state = dm.state_dict()
    other = make_dm(demo_data, steps_per_epoch=9)
    with pytest.warns(UserWarning, match="steps_per_epoch: 7 -> 9"):
        other.load_state_dict(state)


def test_trainer_checkpoint_resume_continues_the_stream(demo_data, tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch["keys"]))
            return (batch["input"].mean() - self.w) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def trainer(**kw):
        return pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            **kw,
        )

    ref = Recorder()
    trainer().fit(ref, datamodule=make_dm(demo_data, steps_per_epoch=5))
    assert len(ref.seen) == 10

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    first = Recorder()
    trainer(callbacks=[ckpt], max_steps=3).fit(first, datamodule=make_dm(demo_data, steps_per_epoch=5))
    assert first.seen == ref.seen[:3]
    saved = torch.load(tmp_path / "step=3.ckpt", weights_only=False)["ImagePairDataModule"]
    assert (saved["epoch"], saved["consumed"]) == (0, 3)

    resumed = Recorder()
    trainer().fit(
        resumed, datamodule=make_dm(demo_data, steps_per_epoch=5), ckpt_path=tmp_path / "step=3.ckpt"
    )
    assert resumed.seen == ref.seen[3:]


def _recorder_and_trainer():
    import lightning.pytorch as pl

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch["keys"]))
            return (batch["input"].mean() - self.w) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def trainer(root, **kw):
        kw.setdefault("max_epochs", 3)
        kw.setdefault("enable_checkpointing", "callbacks" in kw)
        return pl.Trainer(
            default_root_dir=root,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            **kw,
        )

    return Recorder, trainer


@pytest.mark.parametrize(
    "when", [{"every_n_train_steps": 2}, {"every_n_epochs": 1, "save_on_train_epoch_end": True}]
)
def test_checkpoint_at_epoch_end_resumes_with_next_epoch(demo_data, tmp_path, when):
    """A checkpoint saved on the last batch of epoch 0 (or at its end) continues with epoch 1's batches."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    Recorder, trainer = _recorder_and_trainer()
    ref, ref_dm = Recorder(), make_dm(demo_data, steps_per_epoch=2)
    trainer(tmp_path).fit(ref, datamodule=ref_dm)
    assert [e for e, _ in ref.seen] == [0, 0, 1, 1, 2, 2]
    # after the last epoch the stream stands at the start of the next one (the trainer's counters
    # have moved on, the loop's batch counter has not been reset)
    assert (ref_dm.state_dict()["epoch"], ref_dm.state_dict()["consumed"]) == (3, 0)

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{step}", **when)
    first = Recorder()
    trainer(tmp_path, callbacks=[ckpt], max_steps=2).fit(
        first, datamodule=make_dm(demo_data, steps_per_epoch=2)
    )
    assert first.seen == ref.seen[:2]
    saved = torch.load(tmp_path / "step=2.ckpt", weights_only=False)["ImagePairDataModule"]
    assert (saved["epoch"], saved["consumed"]) == (1, 0)

    resumed, resumed_dm = Recorder(), make_dm(demo_data, steps_per_epoch=2)
    trainer(tmp_path).fit(resumed, datamodule=resumed_dm, ckpt_path=tmp_path / "step=2.ckpt")
    assert [keys for _, keys in resumed.seen] == [keys for _, keys in ref.seen[2:]]
    assert resumed.seen == ref.seen[2:]
    assert resumed_dm.state_dict() == ref_dm.state_dict()
