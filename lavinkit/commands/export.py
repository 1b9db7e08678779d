"""``lavinkit export``: one consolidated safetensors weights file from any strategy's training checkpoint.

    lavinkit export runs/jdit_1b/checkpoints/last.ckpt --out weights/jdit_1b_ema.safetensors           # EMA
    lavinkit export runs/jdit_1b/checkpoints/last.ckpt --out weights/jdit_1b_raw.safetensors --weights raw

The checkpoint may be

* a Lightning ``.ckpt`` file (single device, DDP, FSDP with ``state_dict_type: full``);
* a distributed-checkpoint folder (FSDP2 through ``ModelParallelStrategy``, FSDP with ``state_dict_type:
  sharded``): the weights shards plus Lightning's ``meta.pt``. The EMA weights are read from ``meta.pt`` (the EMA
  callback gathers them on save); the raw weights are consolidated from the shards in this one process;
* a DeepSpeed checkpoint folder (``<folder>/checkpoint/mp_rank_00_model_states.pt``): EMA from its client state;
  raw weights consolidated with Lightning's ``convert_zero_checkpoint_to_fp32_state_dict`` (needs ``deepspeed``).

The output is a lavinkit weights file (prefix-free state dict, the model kind and config in its metadata, plus
``lavinkit_weights`` = ``ema`` or ``raw``) that ``JDiT.from_pretrained`` / ``STVAE.from_pretrained``, ``lavinkit
infer`` and ``lavinkit eval`` load. ``--weights ema`` fails (naming the file) when the run kept no EMA.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

META = "meta.pt"
DEEPSPEED_STATES = Path("checkpoint") / "mp_rank_00_model_states.pt"


class ExportError(ValueError):
    """A checkpoint that cannot be exported (the message names the file and what is wrong)."""


def _strip(state: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    from lavinkit.lit.callbacks import _clean_name

    out = {}
    for key, value in state.items():
        key = _clean_name(key)
        if key.startswith(prefix) and isinstance(value, torch.Tensor):
            out[key[len(prefix):]] = value
    return out


def _flatten_dcp_state(state: dict[str, Any]) -> dict[str, Any]:
    """The model entries of a loaded distributed checkpoint: ``{"state_dict": {...}}`` (nested) or flattened
    ``"state_dict.<name>"`` keys."""
    if isinstance(state.get("state_dict"), dict):
        return state["state_dict"]
    return {k[len("state_dict."):]: v for k, v in state.items() if k.startswith("state_dict.")}


def _load_dcp_model_state(folder: Path) -> dict[str, Any]:
    """The full model state dict of a distributed-checkpoint folder, consolidated in this process (no optimizer)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(folder), planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
                     no_dist=True)
    return _flatten_dcp_state(state)


def read_checkpoint(path: str | Path, weights: str = "ema") -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """``(kind, config, prefix-free state dict)`` of the EMA (``weights="ema"``) or raw weights of a training
    checkpoint file or folder (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ExportError: not a lavinkit checkpoint, or no EMA weights in it when ``weights="ema"``.
    """
    if weights not in ("ema", "raw"):
        raise ExportError(f"--weights must be 'ema' or 'raw', got {weights!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    if path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        layout, raw_loader = "file", lambda: checkpoint.get("state_dict", {})
    elif (path / META).is_file():
        checkpoint = torch.load(path / META, map_location="cpu", weights_only=True)
        layout, raw_loader = "distributed", lambda: _load_dcp_model_state(path)
    elif (path / DEEPSPEED_STATES).is_file():
        checkpoint = torch.load(path / DEEPSPEED_STATES, map_location="cpu", weights_only=False)
        layout, raw_loader = "deepspeed", lambda: _deepspeed_raw_state(path)
    else:
        raise ExportError(
            f"{path}: a folder without {META} (distributed checkpoint) or {DEEPSPEED_STATES} (DeepSpeed); "
            "pass a Lightning .ckpt file or a checkpoint folder written by a lavinkit run"
        )
    block = checkpoint.get("lavinkit") if isinstance(checkpoint, dict) else None
    if not block or "kind" not in block:
        raise ExportError(f"{path}: not a lavinkit training checkpoint (no 'lavinkit' entry with the model kind)")
    kind, config, prefix = block["kind"], dict(block["config"]), block.get("prefix", "")
    if weights == "ema":
        ema = block.get("ema_state_dict")
        if not ema:
            raise ExportError(
                f"{path}: holds no EMA weights (the run had no lavinkit.lit.callbacks.EMA callback, or it had not "
                "updated yet); export the raw weights with --weights raw"
            )
        return kind, config, {k: v for k, v in ema.items()}
    state = _strip(raw_loader(), prefix)
    if not state:
        raise ExportError(f"{path}: no {kind} weights under the prefix {prefix!r} in its {layout} state dict")
    return kind, config, state


def _deepspeed_raw_state(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a DeepSpeed checkpoint folder (Lightning's consolidation; needs deepspeed)."""
    try:
        from lightning.pytorch.utilities.deepspeed import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as err:
        raise ExportError(
            f"{folder}: consolidating DeepSpeed ZeRO shards needs the deepspeed package (pip install deepspeed); "
            "--weights ema works without it"
        ) from err
    return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="checkpoint")


DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export(checkpoint: str | Path, out: str | Path, weights: str = "ema", dtype: str = "keep") -> Path:
    """Write the consolidated weights of ``checkpoint`` to ``out`` (safetensors); returns ``out``."""
    from lavinkit.models.io import save_pretrained

    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    kind, config, state = read_checkpoint(checkpoint, weights)
    target = DTYPES[dtype]
    if target is not None:
        state = {k: (v.to(target) if v.is_floating_point() else v) for k, v in state.items()}
    return save_pretrained(out, kind, config, state, extra_metadata={"lavinkit_weights": weights})


def build_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lavinkit export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=str, help="training checkpoint: .ckpt file, distributed or DeepSpeed folder")
    parser.add_argument("--out", type=str, required=True, help="output .safetensors file")
    parser.add_argument("--weights", type=str, default="ema", help="ema (default) or raw")
    parser.add_argument("--dtype", type=str, default="keep", help="keep, float32, bfloat16 or float16")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv or []))
    if not args.out.endswith(".safetensors"):
        print(f"lavinkit export: --out {args.out}: the output is a .safetensors file", file=sys.stderr)
        return 2
    try:
        path = export(args.checkpoint, args.out, weights=args.weights, dtype=args.dtype)
    except (FileNotFoundError, ExportError) as err:
        print(f"lavinkit export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({args.weights} weights)")
    return 0
