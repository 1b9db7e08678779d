"""``lavinkit convert``: official LaVin-DiT checkpoints <-> lavinkit weights files.

Official -> lavinkit (``--to lavinkit``, default)::

    lavinkit convert lavin_dit.safetensors dit.safetensors --kind jdit
    lavinkit convert stvae.pt vae.safetensors --kind stvae
    lavinkit convert small_dit.safetensors dit.safetensors --kind jdit \\
        --official_kwargs '{"hidden_size": 72, "depth": 2, "num_heads": 4, "kv_group": 2, "in_channels": 8}'

lavinkit -> official layout (``--to official``)::

    lavinkit convert dit.safetensors lavin_dit.safetensors --kind jdit --to official
    lavinkit convert vae.safetensors stvae.pt --kind stvae --to official    # .pt: {"state_dict": ...}

Official DiT files are safetensors; official VAE files are torch files holding ``{"state_dict": ...}``
(read with ``weights_only=True``) or safetensors. ``--official_kwargs`` is a JSON object of official
constructor arguments or a lavinkit preset name (default: the official preset of ``--kind``).
Output tensors keep the source dtype unless ``--dtype`` says otherwise; bfloat16 -> float16 is refused
(float16 overflows above 65504 and loses bfloat16's range). ``--progress`` (default on) shows a bar with an ETA
over the bytes of the source file as it is read (tensor by tensor for safetensors files), then the write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_PRESET = {"jdit": "official-3b", "stvae": "official"}


class ConvertError(ValueError):
    """A conversion that cannot proceed; the message names the file, key or option at fault."""


def official_kwargs_for(kind: str, spec: str | None) -> dict[str, Any]:
    """Official constructor arguments from a JSON object or a preset name (``None``: official preset)."""
    spec = DEFAULT_PRESET[kind] if spec is None else spec.strip()
    if spec.startswith("{"):
        try:
            kwargs = json.loads(spec)
        except json.JSONDecodeError as err:
            raise ConvertError(f"--official_kwargs is not valid JSON: {err}") from None
        if not isinstance(kwargs, dict):
            raise ConvertError("--official_kwargs must be a JSON object")
        return kwargs
    if kind == "jdit":
        from lavinkit.interop.jdit_official import official_kwargs_from_config
        from lavinkit.models.jdit import PRESETS, JDiTConfig

        if spec not in PRESETS:
            raise ConvertError(f"--official_kwargs: unknown J-DiT preset {spec!r}; choose from {', '.join(PRESETS)} or pass JSON")
        try:
            return official_kwargs_from_config(JDiTConfig.from_name(spec))
        except ValueError as err:
            raise ConvertError(f"--official_kwargs: preset {spec!r}: {err}") from None
    from lavinkit.models.stvae.config import PRESETS as STVAE_PRESETS

    if spec not in STVAE_PRESETS:
        raise ConvertError(f"--official_kwargs: unknown ST-VAE preset {spec!r}; choose from {', '.join(STVAE_PRESETS)} or pass JSON")
    return dict(STVAE_PRESETS[spec])


def progress_bar(src: Path, enabled: bool = True):
    """The bar of one conversion: bytes of ``src`` read, with an ETA (tqdm, like the other commands' bars)."""
    from tqdm.auto import tqdm

    total = src.stat().st_size if src.is_file() else None
    return tqdm(total=total, desc="lavinkit convert", unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled)


def _read_done(bar) -> None:
    """Mark the source as read (headers and formats read in one call included) and say what comes next."""
    if bar is not None:
        bar.update(max((bar.total or 0) - bar.n, 0))
        bar.set_postfix_str("writing")


def _read_official(path: Path, kind: str, bar=None) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint file; ``bar`` advances by each tensor's bytes as it is read."""
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        state = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "lavinkit_kind" in meta:
                raise ConvertError(f"{path} is already a lavinkit weights file (kind {meta['lavinkit_kind']!r}); "
                                   "use --to official to export it")
            # what safetensors' load_file does, one tensor at a time so that the bar follows the read
            for key in f.keys():
                state[key] = f.get_tensor(key)
                if bar is not None:
                    bar.update(state[key].nbytes)
    elif kind == "stvae":
        from lavinkit.interop.stvae_official import load_official_stvae_file

        state = load_official_stvae_file(path)
    else:
        raise ConvertError(f"{path}: official J-DiT checkpoints are .safetensors files")
    _read_done(bar)
    return state


def _target_dtype(state: dict[str, torch.Tensor], dtype: str) -> torch.dtype | None:
    """The requested output dtype (``None`` = keep), refusing bfloat16 -> float16."""
    if dtype == "keep":
        return None
    target = DTYPES[dtype]
    source = {v.dtype for v in state.values() if v.is_floating_point()}
    if target == torch.float16 and torch.bfloat16 in source:
        raise ConvertError(
            "--dtype float16 requested for bfloat16 weights: float16 overflows above 65504 and has a far smaller "
            "exponent range than bfloat16, so this conversion can silently corrupt weights; "
            "use --dtype bfloat16 (or keep) or --dtype float32"
        )
    return target


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _save_official(state: dict[str, torch.Tensor], dst: Path, kwargs: dict[str, Any]) -> None:
    """Write an official-layout file; replaced atomically (an interrupted save leaves the previous ``dst``)."""
    from lavinkit.fileio import atomic_open, atomic_path

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if dst.suffix in (".pt", ".pth", ".ckpt"):
        with atomic_open(dst) as f:
            torch.save({"state_dict": state}, f)
    else:
        from safetensors.torch import save_file

        with atomic_path(dst) as tmp:
            save_file(state, str(tmp), metadata={"official_kwargs": json.dumps(kwargs)})


def guess_kind(state: dict[str, torch.Tensor]) -> str | None:
    """``"jdit"`` or ``"stvae"`` from official key names, ``None`` when unclear."""
    if any(k.startswith(("blocks.", "x_embedder.", "t_embedder.")) for k in state):
        return "jdit"
    if any(k.startswith(("encoder.", "decoder.")) for k in state):
        return "stvae"
    return None


def to_lavinkit(src: Path, dst: Path, kind: str, kwargs: dict[str, Any], dtype: str, bar=None) -> Path:
    """Official checkpoint file -> lavinkit weights file (safetensors with kind and config); ``bar``: see
    :func:`progress_bar`."""
    from lavinkit.models.io import save_pretrained

    state = _read_official(src, kind, bar)
    guessed = guess_kind(state)
    if guessed is not None and guessed != kind:
        raise ConvertError(f"{src} looks like an official {guessed} checkpoint, not {kind}; use --kind {guessed}")
    target = _target_dtype(state, dtype)
    try:
        if kind == "jdit":
            from lavinkit.interop.jdit_official import config_from_official, official_to_lavinkit_state_dict

            config = config_from_official(**kwargs)
            ours = official_to_lavinkit_state_dict(state, config)  # renames only: no model is materialised
            return save_pretrained(dst, "jdit", config.to_dict(), _cast(ours, target))
        from lavinkit.interop.stvae_official import stvae_from_official

        stored = {v.dtype for v in state.values() if v.is_floating_point()}
        keep = stored.pop() if len(stored) == 1 else torch.float32
        vae = stvae_from_official(state, dtype=target or keep, **kwargs)
        return vae.save_pretrained(dst)
    except (KeyError, TypeError) as err:
        raise ConvertError(f"{src} as an official {kind} checkpoint: {err.args[0] if err.args else err}") from None
    except ValueError as err:
        raise ConvertError(f"{src} as an official {kind} checkpoint: {err}") from None


def to_official(src: Path, dst: Path, kind: str, dtype: str, use_ema: bool, bar=None) -> Path:
    """lavinkit weights file (or training checkpoint) -> official-layout checkpoint file; ``bar``: see
    :func:`progress_bar`."""
    from lavinkit.models.io import load_pretrained

    stored_kind, config, state = load_pretrained(src, use_ema=use_ema)
    _read_done(bar)
    if stored_kind != kind:
        raise ConvertError(f"{src} holds a {stored_kind!r} model but --kind is {kind!r}")
    target = _target_dtype(state, dtype)
    if kind == "jdit":
        from lavinkit.interop.jdit_official import (
            _expected_shapes,
            lavinkit_to_official_state_dict,
            official_kwargs_from_config,
        )
        from lavinkit.models.jdit import JDiTConfig

        cfg = JDiTConfig.from_dict(config)
        expected = _expected_shapes(cfg)
        bad = sorted(set(expected) ^ set(state)) + sorted(
            k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k])
        )
        if bad:
            raise ConvertError(f"{src}: state dict does not match its own J-DiT config; offending keys: {bad[:20]}")
        official, kwargs = lavinkit_to_official_state_dict(state), official_kwargs_from_config(cfg)
    else:
        from lavinkit.interop.stvae_official import stvae_to_official
        from lavinkit.models.stvae import STVAE

        vae = STVAE.from_pretrained(src, use_ema=use_ema)
        official, kwargs = stvae_to_official(vae), vae.config.to_dict()
    _save_official(_cast(official, target), dst, kwargs)
    return dst


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="lavinkit convert",
        description="Convert checkpoints between the official LaVin-DiT layout and lavinkit weights files.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("src", type=str, help="input checkpoint file")
    parser.add_argument("dst", type=str, help="output file (.safetensors; --to official --kind stvae also .pt)")
    parser.add_argument("--kind", type=Literal["jdit", "stvae"], required=True, help="which model the file holds")
    parser.add_argument("--to", type=Literal["lavinkit", "official"], default="lavinkit", help="output layout")
    parser.add_argument("--official-kwargs", "--official_kwargs", type=str | None, default=None,
                        help="official constructor arguments as JSON, or a preset name (default: official preset)")
    parser.add_argument("--dtype", type=Literal["keep", "float32", "bfloat16", "float16"], default="keep",
                        help="output dtype; bfloat16 -> float16 is refused")
    parser.add_argument("--use-ema", "--use_ema", type=bool, default=True, help="export EMA weights of a training checkpoint")
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar with an ETA")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    try:
        with progress_bar(src, args.progress) as bar:
            if args.to == "lavinkit":
                kwargs = official_kwargs_for(args.kind, args.official_kwargs)
                out = to_lavinkit(src, dst, args.kind, kwargs, args.dtype, bar)
            else:
                out = to_official(src, dst, args.kind, args.dtype, args.use_ema, bar)
            bar.set_postfix_str("written")
    except (ConvertError, FileNotFoundError) as err:
        print(f"lavinkit convert: error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # lavinkit file/config problems raised by the loaders (they name the file)
        print(f"lavinkit convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.kind}, {args.to} layout)", file=sys.stderr)
    return 0
