"""Failures that must stop a run or be seen: consecutive non-finite steps stop both modules with a clear error;
bad samples are counted, shown (``data/skipped``) and summarised by default, and their counts survive a resume."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lavinkit.lit import JDiTModule, STVAEModule
from lavinkit.lit.callbacks import EMA
from lavinkit.losses import KLLoss, ReconstructionLoss


def _images(root: Path, split: str = "train") -> str:
    return str(root / split / "images-*.tar")


def _data(train_urls, val_urls, **kwargs):
    from lavinkit.data import ImagePairDataModule

    args = dict(batch_size=1, num_context=0, steps_per_epoch=10, val_batches=1, shuffle_buffer=8, seed=0)
    args.update(kwargs)
    return ImagePairDataModule(train_urls=train_urls, val_urls=val_urls, **args)


def _trainer(root: Path, max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    args = dict(accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=str(root), logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, limit_val_batches=0)
    args.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **args)


class _Batches(pl.Callback):
    """Counts the training batches started and the global step at each."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(trainer.global_step)


def _stvae(**kwargs) -> STVAEModule:
    torch.manual_seed(0)
    return STVAEModule("tiny", ReconstructionLoss(l1_weight=1.0), KLLoss(1e-6),
                       optimizer=partial(torch.optim.AdamW, lr=1e-3), **kwargs)


def _jdit(vae: Path, **kwargs) -> JDiTModule:
    torch.manual_seed(0)
    return JDiTModule(dit="tiny", vae=str(vae), optimizer=partial(torch.optim.AdamW, lr=1e-3),
                      val_samples_per_task=0, **kwargs)


def _poison(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))


# ------------------------------------------------------------------ non-finite steps


def test_stvae_stops_after_max_consecutive_nonfinite_steps(demo_data, tmp_path):
    module = _stvae(max_nonfinite_steps=3)
    _poison(module.vae)  # every loss is NaN, and a skipped step never repairs the weights
    seen = _Batches()
    with pytest.raises(FloatingPointError) as err:
        _trainer(tmp_path, 50, [seen]).fit(module, _data(_images(demo_data), None))
    message = str(err.value)
    assert "STVAEModule: non-finite loss or gradient norm in 4 consecutive steps (max_nonfinite_steps=3)" in message
    assert "global step 0" in message and "batch keys ['" in message
    assert seen.steps == [0, 0, 0, 0]  # 3 tolerated, the 4th stops the run; no update in between
    assert int(module.skipped_nonfinite) == 4


def test_jdit_stops_after_max_consecutive_nonfinite_steps(demo_data, tiny_vae, tmp_path):
    module = _jdit(tiny_vae, max_nonfinite_steps=2)
    module.configure_model()
    _poison(module.dit)
    seen = _Batches()
    with pytest.raises(FloatingPointError) as err:
        _trainer(tmp_path, 50, [seen]).fit(module, _data(_images(demo_data), None, num_context=1))
    assert "JDiTModule: non-finite loss in 3 consecutive steps (max_nonfinite_steps=2)" in str(err.value)
    # automatic optimisation counts a global step for a batch whose training_step returns None (no update)
    assert len(seen.steps) == 3 and module.nonfinite_steps == 3


def test_a_finite_step_resets_the_consecutive_count(demo_data, tiny_vae, tmp_path):
    module = _jdit(tiny_vae, max_nonfinite_steps=1)
    original, calls = module.flow_loss, []

    def every_other_nan(batch, *, dropout):
        terms = original(batch, dropout=dropout)
        calls.append(1)
        if len(calls) % 2:  # batches 1, 3, 5, ...: one non-finite step at a time
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    module.flow_loss = every_other_nan
    ema = EMA(decay=0.5)
    trainer = _trainer(tmp_path, 4, [ema])
    trainer.fit(module, _data(_images(demo_data), None, num_context=1))
    assert len(calls) == 4 and module.nonfinite_steps == 2 and module.nonfinite.consecutive == 0
    assert ema.n_averaged == 2  # the skipped steps did not update the average


def test_nonfinite_counts_survive_a_resume(demo_data, tmp_path):
    module = _stvae(max_nonfinite_steps=5)
    _poison(module.vae)
    trainer = _trainer(tmp_path, 50, [])
    with pytest.raises(FloatingPointError):
        trainer.fit(module, _data(_images(demo_data), None))
    path = tmp_path / "nan.ckpt"
    trainer.save_checkpoint(path)
    block = torch.load(path, weights_only=True)["lavinkit"]
    assert block["nonfinite"] == {"total": 6, "consecutive": 6}
    resumed = _stvae(max_nonfinite_steps=6)
    with pytest.raises(FloatingPointError, match="in 7 consecutive steps"):  # one more, then the limit
        _trainer(tmp_path, 50, []).fit(resumed, _data(_images(demo_data), None), ckpt_path=str(path))
    assert int(resumed.skipped_nonfinite) == 7


# ------------------------------------------------------------------ skipped samples


def _shard_with_bad_third(tmp_path: Path) -> str:
    """One image shard of 12 pairs (16x16) in which every third sample's input does not decode."""
    import webdataset as wds

    from lavinkit.data import make_sample

    rng = np.random.default_rng(0)
    path = tmp_path / "pairs-000000.tar"
    with wds.TarWriter(str(path)) as writer:
        for i in range(12):
            x = rng.integers(0, 256, (2, 1, 16, 16, 3), dtype=np.uint8)
            sample = make_sample(f"t-{i:03d}", "t", x[0], x[1])
            if i % 3 == 2:
                sample["input.png"] = b"\x89PNG not really"
            writer.write(sample)
    return str(path)


def test_skips_are_shown_and_summarised_without_configuration(tmp_path):
    from lavinkit.data import SkippedSamplesLogger
    from lavinkit.data.datamodule import skipped_samples_summary

    shard = _shard_with_bad_third(tmp_path)
    dm = _data(shard, None, max_skipped=None)
    trainer = _trainer(tmp_path, 6, [], logger=pl.loggers.CSVLogger(str(tmp_path), name="csv", version=""),
                       log_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"data: skipped \d+ of \d+ samples") as caught:
        trainer.fit(_stvae(), dm)
    assert sum(isinstance(cb, SkippedSamplesLogger) for cb in trainer.callbacks) == 1  # added by the DataModule
    assert dm.skipped >= 2 and set(dm.skipped_by_shard) == {shard}
    assert dm.samples_read >= 6 and dm.skipped * 3 <= dm.samples_read + dm.skipped + 3  # about a third
    summary = [str(w.message) for w in caught if "data: skipped" in str(w.message)]
    assert summary == [skipped_samples_summary(dm.skipped, dm.samples_read, dm.skipped_by_shard)]
    assert f"most in shard {shard} ({dm.skipped})" in summary[0]
    shown = float(trainer.progress_bar_metrics["data/skipped"])
    assert 1 <= shown <= dm.skipped  # the last batch's count (the loader may have read one batch further)
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("data/skipped")
    logged = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert logged == sorted(logged) and logged[-1] == shown


def test_no_summary_when_nothing_is_skipped(demo_data, tmp_path, recwarn):
    trainer = _trainer(tmp_path, 2, [])
    dm = _data(_images(demo_data), None)
    trainer.fit(_stvae(), dm)
    assert dm.skipped == 0 and dm.samples_read >= 2
    assert not [w for w in recwarn if "data: skipped" in str(w.message)]
    assert float(trainer.progress_bar_metrics["data/skipped"]) == 0.0


def test_skip_counts_survive_a_resume(tmp_path):
    shard = _shard_with_bad_third(tmp_path)
    first_dm = _data(shard, None, max_skipped=None, steps_per_epoch=6)
    trainer = _trainer(tmp_path, 6, [])
    trainer.fit(_stvae(), first_dm)
    path = tmp_path / "step6.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["ImagePairDataModule"]
    assert saved["skipped"] == first_dm.skipped >= 1 and saved["skipped_by_shard"] == {shard: first_dm.skipped}
    assert saved["samples_read"] == first_dm.samples_read and saved["last_skipped"][0] == shard

    resumed_dm = _data(shard, None, max_skipped=None, steps_per_epoch=6)
    resumed = _trainer(tmp_path, 12, [])
    resumed.fit(_stvae(), resumed_dm, ckpt_path=str(path))
    assert resumed.global_step == 12
    assert resumed_dm.skipped > saved["skipped"]  # continued from the saved count, not from zero
    assert resumed_dm.skipped_by_shard == {shard: resumed_dm.skipped}
    assert resumed_dm.samples_read > saved["samples_read"]


@pytest.mark.slow
def test_fork_server_workers_without_main_guard_say_what_to_do(demo_data, tmp_path):
    """Workers that decode video start from a fork server once PyAV is loaded; a script without the __main__ guard
    fails, and the error says to add the guard (about 10 s: the fork server starts torch)."""
    script = tmp_path / "train.py"
    script.write_text(
        "import av  # noqa: F401\n"
        "from lavinkit.data import VideoPairDataModule\n"
        f"dm = VideoPairDataModule({str(demo_data / 'train' / 'videos-*.tar')!r}, batch_size=1, num_context=1, "
        "steps_per_epoch=1, num_workers=1)\n"
        "for batch in dm.train_dataloader():\n"
        "    print(tuple(batch['input'].shape))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "exited unexpectedly" in last and "'forkserver'" in last and str(script) in last
    assert 'if __name__ == "__main__":' in last
