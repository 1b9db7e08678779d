"""`lavinkit fit|validate --ckpt_path <any checkpoint>` for both modules (the tiny recipes, shortened), and the
validation of an epoch whose last batch wrote the checkpoint runs when the run resumes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from lavinkit.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _recipe(tmp_path: Path, source: str, run: str, demo_data: Path, **model_args) -> Path:
    """``recipes/<source>`` shortened to 4 steps (epochs of 2 batches, a checkpoint after every step), on the 32x32
    demo images, writing checkpoints to ``<run>/ckpt`` and metrics to ``<run>/csv/metrics.csv``."""
    root = tmp_path / run
    recipe = yaml.safe_load((RECIPES / source).read_text())
    trainer = recipe["trainer"]
    trainer.update(max_steps=4, default_root_dir=str(root), log_every_n_steps=1, enable_progress_bar=False)
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(root), "name": "csv", "version": ""}}
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"].update(dirpath=str(root / "ckpt"), every_n_train_steps=1, save_top_k=-1)
    recipe["model"]["init_args"].update(model_args)
    recipe["data"]["init_args"].update(
        train_urls=str(demo_data / "train" / "images-*.tar"), val_urls=str(demo_data / "val" / "images-*.tar"),
        size=32, batch_size=2, steps_per_epoch=2, val_batches=1,
    )
    path = tmp_path / f"{run}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _val_rows(run_dir: Path, metric: str) -> dict[int, float]:
    """``{logged step: value}`` of a validation metric in a run's metrics.csv."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(row["step"]): float(row[metric]) for row in csv.DictReader(f) if row.get(metric)}


def _resume_and_validate(tmp_path: Path, source: str, demo_data: Path, metric: str, **model_args) -> None:
    first = _recipe(tmp_path, source, "first", demo_data, **model_args)
    assert main(["fit", "--config", str(first)]) == 0
    ckpts = tmp_path / "first" / "ckpt"
    step1, step2 = ckpts / "epoch=0-step=1.ckpt", ckpts / "epoch=0-step=2.ckpt"
    assert step1.is_file() and step2.is_file()
    # step 2 is epoch 0's last batch: its validation had not run when the checkpoint was written
    assert torch.load(step2, weights_only=True)["lavinkit"]["validation_pending"] is True
    assert torch.load(step1, weights_only=True)["lavinkit"]["validation_pending"] is False
    uninterrupted = _val_rows(tmp_path / "first", metric)
    assert len(uninterrupted) == 2  # after each epoch

    resumed = _recipe(tmp_path, source, "resumed", demo_data, **model_args)
    assert main(["fit", "--config", str(resumed), "--ckpt_path", str(step2)]) == 0
    written = sorted(p.name for p in (tmp_path / "resumed" / "ckpt").glob("*.ckpt"))
    assert written == ["epoch=1-step=3.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]  # continued from step 2
    assert torch.load(tmp_path / "resumed" / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 4
    again = _val_rows(tmp_path / "resumed", metric)
    assert again.keys() == uninterrupted.keys()  # epoch 0's validation ran on resume, at the same logged step
    for step, value in uninterrupted.items():
        assert again[step] == pytest.approx(value, rel=1e-4, abs=1e-5)

    validated = _recipe(tmp_path, source, "validated", demo_data, **model_args)
    assert main(["validate", "--config", str(validated), "--ckpt_path", str(step2)]) == 0
    (value,) = _val_rows(tmp_path / "validated", metric).values()
    assert value == pytest.approx(uninterrupted[min(uninterrupted)], rel=1e-4, abs=1e-5)  # the step-2 weights (EMA)


@pytest.fixture(scope="module")
def stvae_run(demo_data, tmp_path_factory) -> Path:
    """A 4-step tiny ST-VAE run through `lavinkit fit`, then resumed and validated from its step-2 checkpoint."""
    tmp_path = tmp_path_factory.mktemp("stvae")
    _resume_and_validate(tmp_path, "stvae/tiny_stage1.yaml", demo_data, "val/psnr")
    return tmp_path


def test_stvae_fit_and_validate_from_a_step_checkpoint(stvae_run):
    assert (stvae_run / "validated" / "csv" / "metrics.csv").is_file()


def test_jdit_fit_and_validate_from_a_step_checkpoint(stvae_run, demo_data, tmp_path):
    vae = stvae_run / "first" / "ckpt" / "last.ckpt"
    _resume_and_validate(
        tmp_path, "jdit/tiny.yaml", demo_data, "val/loss", vae=str(vae),
        dit_overrides={"hidden_size": 96, "depth": 2, "num_heads": 2, "kv_group": 1}, val_samples_per_task=1,
    )


def test_hyperparameters_name_the_module_class_and_still_load(tmp_path):
    from lavinkit.lit import JDiTModule, STVAEModule
    from lavinkit.losses import KLLoss, ReconstructionLoss

    module = STVAEModule("tiny", ReconstructionLoss(), KLLoss(1e-6), seed=3)
    assert module.hparams["_class_path"] == "lavinkit.lit.stvae_module.STVAEModule"
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.0"}, path)
    restored = STVAEModule.load_from_checkpoint(path)  # "_class_path" is not passed to __init__
    assert restored.seed == 3 and type(restored.reconstruction) is ReconstructionLoss
    assert JDiTModule(dit="tiny").hparams["_class_path"] == "lavinkit.lit.jdit_module.JDiTModule"


def test_checkpoints_without_the_flag_read_it_from_the_loop_state(stvae_run, demo_data, tmp_path):
    from types import SimpleNamespace

    from lavinkit.lit.utils import checkpoint_validation_pending

    ckpts = stvae_run / "first" / "ckpt"
    trainer = SimpleNamespace(check_val_every_n_epoch=1, enable_validation=True)
    for name, pending in (("epoch=0-step=1", False), ("epoch=0-step=2", True), ("epoch=1-step=3", False)):
        checkpoint = torch.load(ckpts / f"{name}.ckpt", weights_only=True)
        assert checkpoint_validation_pending(checkpoint, trainer) is pending, name
        del checkpoint["lavinkit"]["validation_pending"]
        assert checkpoint_validation_pending(checkpoint, trainer) is pending, name
        assert checkpoint_validation_pending(checkpoint, SimpleNamespace(check_val_every_n_epoch=1,
                                                                         enable_validation=False)) is False
    checkpoint = torch.load(ckpts / "epoch=0-step=2.ckpt", weights_only=True)
    del checkpoint["lavinkit"]["validation_pending"]
    assert checkpoint_validation_pending(checkpoint, SimpleNamespace(check_val_every_n_epoch=2,
                                                                     enable_validation=True)) is False
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    resumed = _recipe(tmp_path, "stvae/tiny_stage1.yaml", "resumed_old", demo_data)
    assert main(["fit", "--config", str(resumed), "--ckpt_path", str(old)]) == 0
    assert _val_rows(tmp_path / "resumed_old", "val/psnr").keys() == _val_rows(stvae_run / "first", "val/psnr").keys()
