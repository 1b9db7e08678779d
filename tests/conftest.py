"""Shared fixtures: parity reference tensors, tiny demo shards, GPU skipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).parent / "assets"
PARITY = ASSETS / "parity"

# Two cores: keep intra-op threads low so parallel pytest-internal subprocesses do not oversubscribe.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """Folder with the official reference tensors (copied from shared/parity with their manifest)."""
    return PARITY


@pytest.fixture(scope="session")
def parity_manifest(parity_dir) -> dict:
    return json.loads((parity_dir / "manifest.json").read_text())


def load_parity(name: str) -> dict[str, torch.Tensor]:
    """Load ``tests/assets/parity/<name>.safetensors`` as float32 (uint8 tensors stay uint8)."""
    from safetensors.torch import load_file

    tensors = load_file(str(PARITY / f"{name}.safetensors"))
    return {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}


# Launcher variables a previous in-process DDP run may leave behind; a fresh launch must not inherit them.
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
            "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED", "PL_TRAINER_GPUS")


def run_distributed_script(script: Path, *args: str, cwd: Path | None = None,
                           timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``script`` (which launches its own DDP/FSDP processes) in a clean environment; output captured."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A tiny demo data set (32x32 images, 9-frame clips) built once per test session."""
    from lavinkit.data.demo import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root, image_size=32, clip_frames=9, image_pairs_per_task=12, clip_pairs_per_task=6, seed=0)
    return root



@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    """A randomly initialised ST-VAE of the ``tiny`` preset saved as a weights file (seed 0)."""
    from lavinkit.models.stvae import STVAE, STVAEConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "vae.safetensors"
    STVAE(STVAEConfig.from_name("tiny")).save_pretrained(path)
    return path

def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
