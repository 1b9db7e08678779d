"""Every J-DiT recipe parses against the signatures; the CPU recipes also build their objects (``run=False``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lavinkit.cli import build_cli

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
JDIT = sorted((RECIPES / "jdit").glob("*.yaml"))
GPU_RECIPES = {"jdit_0.1b.yaml", "jdit_1b.yaml", "official_3b.yaml"}


def _parse(args: list[str]):
    """The recipe as ``lavinkit fit`` parses it, nothing instantiated (GPU recipes parse on a CPU machine)."""
    return build_cli(args, instantiate=False).config


def test_all_recipes_present():
    assert {p.name for p in JDIT} >= {"tiny.yaml", "tiny_latents.yaml", *GPU_RECIPES}


@pytest.mark.parametrize("recipe", JDIT, ids=lambda p: p.name)
def test_recipe_parses(recipe):
    config = _parse(["--config", str(recipe)])
    assert config.model.class_path == "lavinkit.lit.JDiTModule"
    init = config.model.init_args
    from lavinkit.models.jdit import JDiTConfig

    JDiTConfig.from_name(init.dit, **(init.dit_overrides or {}))  # the preset and overrides are valid
    if recipe.name in GPU_RECIPES:
        assert config.trainer.precision == "bf16-mixed"
        assert isinstance(init.compile, bool) and "activation_checkpointing" in init.dit_overrides


@pytest.mark.parametrize("extra", [[], ["--config", str(RECIPES / "trainer" / "fsdp.yaml")]], ids=["alone", "fsdp"])
def test_official_recipe_composes_with_fsdp_fragment(extra):
    config = _parse(["--config", str(RECIPES / "jdit" / "official_3b.yaml"), *extra])
    if extra:
        strategy = config.trainer.strategy
        assert strategy.class_path.endswith("FSDPStrategy")
        from lavinkit.models.jdit import JDiT, JDiTConfig

        block = JDiT(JDiTConfig.from_name("tiny"), device="meta").block_class
        assert block in strategy.init_args.auto_wrap_policy  # FSDP wraps exactly the J-DiT's block class


@pytest.mark.parametrize("recipe", ["tiny.yaml", "tiny_latents.yaml"])
def test_cpu_recipe_builds(recipe, tmp_path, demo_data):
    from lavinkit.models.stvae import STVAE, STVAEConfig

    vae = tmp_path / "vae.safetensors"
    STVAE(STVAEConfig.from_name("tiny")).save_pretrained(vae)
    urls = ["--data.init_args.train_urls", str(demo_data / "train" / "images-*.tar"),
            "--data.init_args.val_urls", str(demo_data / "val" / "images-*.tar")]
    if recipe == "tiny_latents.yaml":
        urls = ["--data.init_args.train_urls", str(tmp_path / "latents-*.tar"), "--data.init_args.vae", str(vae)]
    cli = build_cli(["--config", str(RECIPES / "jdit" / recipe), "--model.init_args.vae", str(vae),
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false", *urls], run=False)
    module = cli.model
    assert type(module).__name__ == "JDiTModule" and module.vae_path == str(vae)
    assert module.dit is None  # built by configure_model, under the strategy's init context
    module.configure_model()
    assert sum(p.numel() for p in module.parameters()) > 0
    assert not any(n.startswith("_vae") or ".vae." in n for n in module.state_dict())
    assert cli.trainer.max_steps > 0 and isinstance(module.objective.time_sampler(2), torch.Tensor)


def test_tiny_recipe_composes_with_fsdp2_fragment():
    config = _parse(["--config", str(RECIPES / "jdit" / "tiny.yaml"), "--config",
                     str(RECIPES / "trainer" / "fsdp2.yaml")])
    strategy = config.trainer.strategy
    assert strategy.class_path.endswith("ModelParallelStrategy")
    assert strategy.init_args.data_parallel_size == config.trainer.devices == 2
    assert strategy.init_args.tensor_parallel_size == 1
