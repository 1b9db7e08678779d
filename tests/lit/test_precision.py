"""bf16 recipes train in float32 on CPUs that emulate bfloat16 (``lavinkit.lit.precision``, ``lavinkit fit --cpu_bf16``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import lavinkit.lit.precision as precision_mod
from lavinkit.cli import build_cli
from lavinkit.lit.precision import resolve_cpu_precision

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "quickstart" / "stvae.yaml"  # precision: bf16-mixed


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "bf16"])
def test_bf16_on_an_emulating_cpu_becomes_float32(precision):
    resolved, reason = resolve_cpu_precision(precision, "cpu", slowdown=30.0)
    assert resolved == "32-true"
    assert f"trainer.precision={precision}" in reason and "30x slower" in reason and "--cpu_bf16 always" in reason


@pytest.mark.parametrize(("precision", "accelerator", "mode", "slowdown"), [
    ("bf16-mixed", "cpu", "auto", 0.6),       # native bfloat16: faster than float32
    ("bf16-mixed", "cpu", "auto", 1.4),       # within the limit
    ("bf16-mixed", "cpu", "always", 30.0),    # the user keeps it
    ("32-true", "cpu", "auto", 30.0),         # not bfloat16
    ("16-mixed", "cpu", "auto", 30.0),
    ("bf16-mixed", "gpu", "auto", 30.0),      # not the CPU
    ("bf16-mixed", "cuda", "auto", 30.0),
])
def test_other_precisions_and_devices_are_kept(precision, accelerator, mode, slowdown):
    assert resolve_cpu_precision(precision, accelerator, mode, slowdown=slowdown) == (precision, None)


def test_auto_accelerator_counts_as_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_cpu_precision("bf16-mixed", "auto", slowdown=30.0)[0] == "32-true"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert resolve_cpu_precision("bf16-mixed", "auto", slowdown=30.0)[0] == "bf16-mixed"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="cpu_bf16 must be one of auto, always, got 'never'"):
        resolve_cpu_precision("bf16-mixed", "cpu", "never", slowdown=1.0)


def test_slowdown_is_measured_once_per_process():
    precision_mod.cpu_bf16_slowdown.cache_clear()
    first = precision_mod.cpu_bf16_slowdown()
    assert math.isfinite(first) and first > 0
    assert precision_mod.cpu_bf16_slowdown() == first
    assert precision_mod.cpu_bf16_slowdown.cache_info().hits == 1


@pytest.mark.parametrize(("slowdown", "extra", "expected"), [
    (30.0, [], "32-true"),
    (0.6, [], "bf16-mixed"),
    (30.0, ["--cpu_bf16", "always"], "bf16-mixed"),
])
def test_fit_trains_with_the_resolved_precision(tmp_path, monkeypatch, slowdown, extra, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(precision_mod, "cpu_bf16_slowdown", lambda: slowdown)
    args = ["--config", str(RECIPE), "--trainer.logger", "false", *extra]
    if expected == "32-true":
        with pytest.warns(UserWarning, match="training with 32-true instead"):
            cli = build_cli(args, run=False)
    else:
        cli = build_cli(args, run=False)
    assert cli.trainer.precision == expected


def test_parsing_only_keeps_the_recipe(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_bf16_slowdown", lambda: 30.0)
    config = build_cli(["--config", str(RECIPE)], run=False, instantiate=False).config
    assert config.trainer.precision == "bf16-mixed" and config.cpu_bf16 == "auto"
