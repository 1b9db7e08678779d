"""Weights-only model files and model extraction from training checkpoints.

Two artifacts exist (and are never confused):

* a **weights file** (``.safetensors``): prefix-free state dict of one model, with the model kind and its
  config (JSON) in the safetensors metadata; written by :func:`save_pretrained`.
* a **training checkpoint** (Lightning ``.ckpt``): everything needed to resume. The LightningModules in
  ``lavinkit.lit`` add a ``"lavinkit"`` entry to it: ``{"kind": str, "config": dict, "prefix": str,
  "ema_state_dict": dict | None}`` so that a model can be rebuilt from the checkpoint alone.

:func:`load_pretrained` reads either and returns ``(kind, config_dict, state_dict)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

LAVINKIT_KEY = "lavinkit"


def save_pretrained(path: str | Path, kind: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor],
                    extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``state_dict`` as safetensors with ``kind`` and ``config`` (and ``extra_metadata``, e.g. whether the
    weights are EMA or raw) in the metadata. The file is replaced atomically (:func:`lavinkit.fileio.atomic_path`):
    an interrupted save leaves the previous file, never a partial one."""
    from safetensors.torch import save_file

    from lavinkit.fileio import atomic_path

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    metadata = {**(extra_metadata or {}), "lavinkit_kind": kind, "lavinkit_config": json.dumps(config)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_pretrained(path: str | Path, use_ema: bool = True) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Read a weights file or a lavinkit training checkpoint.

    Returns:
        ``(kind, config, state_dict)`` with a prefix-free state dict. For a training checkpoint the EMA
        weights are returned when present and ``use_ema`` is true, the raw weights otherwise.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a lavinkit weights file or checkpoint (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such model file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "lavinkit_kind" not in meta:
            raise ValueError(
                f"{path}: safetensors file has no lavinkit metadata (kind/config); official checkpoints are "
                "loaded with `lavinkit convert` or lavinkit.interop.official"
            )
        return meta["lavinkit_kind"], json.loads(meta["lavinkit_config"]), load_file(str(path))
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    block = checkpoint.get(LAVINKIT_KEY) if isinstance(checkpoint, dict) else None
    if block is None:
        raise ValueError(f"{path}: not a lavinkit training checkpoint (no {LAVINKIT_KEY!r} entry)")
    ema = block.get("ema_state_dict")
    if use_ema and ema:
        state = dict(ema)
    else:
        prefix = block["prefix"]
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return block["kind"], dict(block["config"]), state
