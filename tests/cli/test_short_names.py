"""LightningCLI wiring: short class names resolve, optimizers come only from the module's constructor."""

from __future__ import annotations

from lavinkit.cli import build_cli, main


def test_short_class_names_resolve(tmp_path):
    cli = build_cli([
        "--model", "JDiTModule", "--model.sampler", "HeunSampler", "--data", "ImagePairDataModule",
        "--trainer.callbacks+=StepTimer", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path),
    ])
    assert type(cli.model).__name__ == "JDiTModule" and type(cli.model.sampler).__name__ == "HeunSampler"
    assert type(cli.datamodule).__name__ == "ImagePairDataModule"
    assert any(type(c).__name__ == "StepTimer" for c in cli.trainer.callbacks)


def test_optimizer_option_is_rejected(capsys):
    code = main(["fit", "--config", "recipes/stvae/tiny_stage1.yaml", "--optimizer", "SGD"])
    assert code == 2
    assert "optimizer" in capsys.readouterr().err
