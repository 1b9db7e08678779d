"""Strategies: 2-process DDP (both modules) and FSDP2 (J-DiT) runs with EMA, exact resume and export; refusals of
unsupported strategy/option combinations; the strategy recipes compose with the J-DiT recipes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, run_distributed_script

SCRIPT = Path(__file__).with_name("dist_resume_script.py")


@pytest.mark.distributed
@pytest.mark.parametrize("kind,strategy", [("jdit", "ddp"), ("jdit", "fsdp2"), ("stvae", "ddp")])
def test_two_process_ema_resume_and_export(kind, strategy, tmp_path):
    """Train 4 steps with EMA (checkpoint at 2 and 4), resume from step 2: weights and EMA equal the uninterrupted
    run's; EMA and raw weights exported from the step-4 checkpoint (a folder under FSDP2) load back exactly."""
    proc = run_distributed_script(SCRIPT, kind, strategy, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"RESUME-EXPORT-OK {kind} {strategy}" in proc.stdout


# ---------------------------------------------------------------------------------------------- refusals


def _fake_trainer(strategy):
    return SimpleNamespace(strategy=strategy, precision_plugin=SimpleNamespace(precision="32-true"))


def test_refuses_tensor_parallel_and_whole_model_compile_under_fsdp2():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lavinkit.lit.parallel import check_jdit_strategy

    with pytest.raises(ValueError, match="tensor_parallel_size: 1"):
        check_jdit_strategy(_fake_trainer(ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)))
    fsdp2 = _fake_trainer(ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    with pytest.raises(ValueError, match="compile: blocks"):
        check_jdit_strategy(fsdp2, compile="model")
    check_jdit_strategy(fsdp2, compile="blocks", activation_checkpointing=2)  # supported


def test_refuses_double_activation_checkpointing_under_fsdp():
    from lightning.pytorch.strategies import FSDPStrategy

    from lavinkit.lit.parallel import check_jdit_strategy
    from lavinkit.models.jdit.block import JointBlock

    fsdp = _fake_trainer(FSDPStrategy(auto_wrap_policy={JointBlock}, activation_checkpointing_policy={JointBlock}))
    with pytest.raises(ValueError, match="checkpointed twice"):
        check_jdit_strategy(fsdp, activation_checkpointing=True)
    with pytest.raises(ValueError, match="keep one of them"):
        check_jdit_strategy(fsdp, config_checkpointing=True)
    check_jdit_strategy(fsdp)  # the strategy's policy alone is fine


def test_refuses_init_weights_under_zero3():
    from lavinkit.lit.parallel import check_jdit_strategy

    class DeepSpeedStrategy:  # stands in for Lightning's (constructing it needs the deepspeed package)
        def __init__(self, stage):
            self.config = {"zero_optimization": {"stage": stage}}

    with pytest.raises(ValueError, match="DeepSpeed stage 2, DDP or FSDP2"):
        check_jdit_strategy(_fake_trainer(DeepSpeedStrategy(3)), init_weights="w.safetensors")
    check_jdit_strategy(_fake_trainer(DeepSpeedStrategy(2)), init_weights="w.safetensors")


def test_stvae_refuses_sharded_strategies():
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    from lavinkit.lit.utils import check_manual_optimization_strategy

    for strategy, match in ((ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1), "FSDP2"),
                            (FSDPStrategy(), "manual optimisation")):
        with pytest.raises(ValueError, match=match) as err:
            check_manual_optimization_strategy(_fake_trainer(strategy), "STVAEModule")
        assert "use strategy: ddp" in str(err.value)


def test_option_values_are_checked():
    from lavinkit.lit import JDiTModule

    with pytest.raises(ValueError, match="compile='fast'"):
        JDiTModule("tiny", compile="fast")
    with pytest.raises(ValueError, match="activation_checkpointing=-1"):
        JDiTModule("tiny", activation_checkpointing=-1)
    module = JDiTModule("tiny", dit_overrides={"activation_checkpointing": True}, activation_checkpointing=2)
    assert module.dit_config.activation_checkpointing is False  # the module's switch decides, no double recompute


# ---------------------------------------------------------------------------------------------- speed switches


def test_selective_activation_checkpointing_keeps_names_and_gradients():
    import torch

    from lavinkit.lit.parallel import parallelize_jdit
    from lavinkit.models.jdit import JDiT, JDiTConfig

    cfg = JDiTConfig.from_name("tiny", depth=4, drop_path=0.0)
    torch.manual_seed(0)
    plain = JDiT(cfg)
    ckpt = JDiT(cfg)
    ckpt.load_state_dict(plain.state_dict())
    parallelize_jdit(ckpt, activation_checkpointing=2)
    assert [getattr(b, "_lavinkit_checkpointed", False) for b in ckpt.blocks] == [True, False, True, False]
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    x, ctx, t = torch.randn(2, 16, 1, 4, 4), torch.randn(2, 16, 3, 4, 4), torch.rand(2)
    for model in (plain, ckpt):
        model(x, t, ctx).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["blocks", "model"])
def test_compiled_jdit_matches_eager(mode):
    import torch

    from lavinkit.lit.parallel import parallelize_jdit
    from lavinkit.models.jdit import JDiT, JDiTConfig

    cfg = JDiTConfig.from_name("tiny")
    torch.manual_seed(0)
    eager, compiled = JDiT(cfg), JDiT(cfg)
    compiled.load_state_dict(eager.state_dict())
    parallelize_jdit(compiled, compile=mode, activation_checkpointing=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x, ctx, t = torch.randn(2, 16, 1, 4, 4), torch.randn(2, 16, 3, 4, 4), torch.rand(2)
    out_e, out_c = eager(x, t, ctx), compiled(x, t, ctx)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    out_e.square().mean().backward()
    out_c.square().mean().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------- recipes


TRAINER_FRAGMENTS = sorted((ROOT / "recipes" / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("fragment", TRAINER_FRAGMENTS, ids=lambda p: p.stem)
def test_strategy_fragments_compose_with_jdit_recipes(fragment):
    """Every strategy fragment composes with a J-DiT recipe (parsed, not instantiated: GPU strategies)."""
    from lavinkit.cli import build_cli

    cli = build_cli(["--config", str(ROOT / "recipes/jdit/jdit_1b.yaml"), "--config", str(fragment)],
                    instantiate=False)
    strategy = cli.config.trainer.strategy
    assert strategy.class_path.rsplit(".", 1)[-1] in {"DDPStrategy", "FSDPStrategy", "ModelParallelStrategy",
                                                      "DeepSpeedStrategy"}
    assert cli.config.model.class_path == "lavinkit.lit.JDiTModule"


def test_strategy_fragments_cover_every_strategy():
    names = {p.stem for p in TRAINER_FRAGMENTS}
    assert {"ddp", "fsdp", "fsdp2", "deepspeed", "deepspeed_zero3"} <= names


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed2", "deepspeed3"])
def test_gpu_strategies_ema_resume_and_export(strategy, tmp_path):
    """Lightning's FSDPStrategy and DeepSpeed ZeRO-2/3 need CUDA: one process each, same checks as the CPU runs."""
    import importlib.util

    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs the deepspeed package")
    proc = run_distributed_script(SCRIPT, "jdit", strategy, tmp_path, 1, "gpu", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert f"RESUME-EXPORT-OK jdit {strategy}" in proc.stdout
