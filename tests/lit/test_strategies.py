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
