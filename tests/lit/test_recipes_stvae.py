"""Every ST-VAE recipe and trainer fragment parses and builds its objects (``run=False``)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from lavinkit.cli import build_cli
from lavinkit.lit import STVAEModule
from lavinkit.lit.callbacks import EMA

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STVAE_RECIPES = sorted((RECIPES / "stvae").glob("*.yaml"))
FRAGMENTS = sorted((RECIPES / "trainer").glob("*.yaml"))
# GPU recipes are parsed on CPU with the hardware switched; everything else is built as written
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32-true"]


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_expected_recipes_exist():
    assert {p.name for p in STVAE_RECIPES} >= {"stage1.yaml", "stage2.yaml", "tiny_stage1.yaml", "tiny_stage2.yaml"}
    assert {p.name for p in FRAGMENTS} >= {"ddp.yaml", "fsdp.yaml", "deepspeed.yaml"}


@pytest.mark.parametrize("recipe", STVAE_RECIPES, ids=lambda p: p.name)
def test_stvae_recipe_builds(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # loggers/checkpoint dirs are relative
    raw = yaml.safe_load(recipe.read_text())
    gpu = raw["trainer"].get("accelerator") == "gpu"
    args = ["--config", str(recipe)]
    if gpu:
        args += ON_CPU + ["--model.init_args.vae=tiny"]  # keep the test light: same recipe, small VAE
    cli = build_cli(args, run=False)
    assert isinstance(cli.model, STVAEModule)
    assert cli.model.automatic_optimization is False
    if not gpu:
        assert cli.model.vae.config.name == "tiny"
        assert cli.trainer.max_steps <= 400
    else:
        assert raw["model"]["init_args"]["vae"] == "official"
        assert raw["trainer"]["precision"] == "bf16-mixed"
        assert "DDPStrategy" in raw["trainer"]["strategy"]["class_path"]
        if "stage2" in recipe.name:  # clips at full size: activation checkpointing on
            assert cli.model.vae.config.gradient_checkpointing
    assert cli.model.adversarial is not None and cli.model.adversarial.disc_start > 0
    ckpts = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert ckpts and all(c.save_last for c in ckpts)
    assert any(isinstance(c, EMA) for c in cli.trainer.callbacks)
    if "stage2" in recipe.name:
        assert cli.model.init_from and cli.model.init_from.endswith("stage1/checkpoints/last.ckpt")
        assert cli.model.adversarial.discriminator.video is not None
        assert type(cli.datamodule).__name__ == "MixtureDataModule"
    else:
        assert cli.model.init_from is None
        assert type(cli.datamodule).__name__ == "ImagePairDataModule"


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda p: p.name)
def test_trainer_fragment_is_valid(fragment):
    raw = yaml.safe_load(fragment.read_text())
    assert set(raw) == {"trainer"}
    from lightning.pytorch import Trainer

    trainer_params = inspect.signature(Trainer.__init__).parameters
    assert set(raw["trainer"]) <= set(trainer_params), set(raw["trainer"]) - set(trainer_params)
    strategy = raw["trainer"]["strategy"]
    cls = _import(strategy["class_path"])
    params = set(inspect.signature(cls.__init__).parameters)
    if cls.__name__ == "DDPStrategy":  # **kwargs go to torch's DistributedDataParallel
        from torch.nn.parallel import DistributedDataParallel

        params |= set(inspect.signature(DistributedDataParallel.__init__).parameters)
    if cls.__name__ == "FSDPStrategy":  # **kwargs go to torch's FullyShardedDataParallel
        from torch.distributed.fsdp import FullyShardedDataParallel

        params |= set(inspect.signature(FullyShardedDataParallel.__init__).parameters)
    unknown = set(strategy.get("init_args", {})) - params
    assert not unknown, f"{fragment.name}: {cls.__name__} has no option(s) {unknown}"
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        for path in strategy.get("init_args", {}).get(key, []) or []:
            _import(path)  # block classes named in the fragment exist


def test_ddp_fragment_merges_into_a_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(RECIPES / "stvae" / "tiny_stage1.yaml"), "--config", str(RECIPES / "trainer" / "ddp.yaml"),
                     "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true"], run=False)
    from lightning.pytorch.strategies import DDPStrategy

    assert isinstance(cli.trainer.strategy, DDPStrategy)
    assert cli.trainer.max_steps == yaml.safe_load((RECIPES / "stvae" / "tiny_stage1.yaml").read_text())["trainer"]["max_steps"]
