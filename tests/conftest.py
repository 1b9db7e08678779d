"""Shared fixtures: parity reference tensors, tiny demo shards, GPU skipping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A tiny demo data set (32x32 images, 9-frame clips) built once per test session."""
    from lavinkit.data.demo import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root, image_size=32, clip_frames=9, image_pairs_per_task=12, clip_pairs_per_task=6, seed=0)
    return root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
