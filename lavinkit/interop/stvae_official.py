"""Official LaVin-DiT ST-VAE (``lib/model/vae3d.py: AutoencoderKLSTVAE``) checkpoints <-> :class:`STVAE`.

Key map (official -> lavinkit), applied in order:

    {enc,dec}oder.down_blocks.i / up_blocks.i  -> {enc,dec}oder.stages.i
    .resnets.j                                 -> .blocks.j        (mid_block.resnets.j -> mid.j)
    .downsamplers.0.conv / .upsamplers.0.conv  -> .downsample.conv / .upsample.conv
    .conv_shortcut                             -> .shortcut
    SpatialNorm .norm_layer / .conv_y.conv / .conv_b.conv -> .norm / .to_scale / .to_shift
    causal convs <name>.conv.{weight,bias}     -> <name>.{weight,bias}

Loading is strict: missing, unexpected and mis-shaped keys are all listed in one error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lavinkit.models.stvae import STVAE, STVAEConfig

# Official constructor arguments that change nothing we build (tiling sizes, loading, checkpoint switch...).
_NON_ARCH = {"tile_sample_min_size", "tile_sample_min_size_t", "load_path", "down_block_types", "up_block_types",
             "act_fn", "pad_mode"}

_CAUSAL_CONVS = r"(conv_in|conv_out|conv1|conv2)"

_TO_OURS: list[tuple[str, str]] = [
    (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", r"\1.mid.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.stages.\1.blocks.\2."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.stages.\1.blocks.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.stages.\1.downsample.conv."),
    (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.", r"decoder.stages.\1.upsample.conv."),
    (r"\.conv_shortcut\.", r".shortcut."),
    (r"\.norm_layer\.", r".norm."),
    (r"\.conv_y\.conv\.", r".to_scale."),
    (r"\.conv_b\.conv\.", r".to_shift."),
    (rf"\.{_CAUSAL_CONVS}\.conv\.(weight|bias)$", r".\1.\2"),
]

_TO_OFFICIAL: list[tuple[str, str]] = [
    (rf"\.{_CAUSAL_CONVS}\.(weight|bias)$", r".\1.conv.\2"),
    (r"^(encoder|decoder)\.mid\.(\d+)\.", r"\1.mid_block.resnets.\2."),
    (r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^decoder\.stages\.(\d+)\.blocks\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    (r"^encoder\.stages\.(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsamplers.0.conv."),
    (r"^decoder\.stages\.(\d+)\.upsample\.conv\.", r"decoder.up_blocks.\1.upsamplers.0.conv."),
    (r"\.shortcut\.", r".conv_shortcut."),
    (r"\.norm\.(weight|bias)$", r".norm_layer.\1"),
    (r"\.to_scale\.", r".conv_y.conv."),
    (r"\.to_shift\.", r".conv_b.conv."),
]


def _apply(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def official_key_to_ours(key: str) -> str:
    """Official state-dict key -> lavinkit key."""
    return _apply(key, _TO_OURS)


def our_key_to_official(key: str) -> str:
    """lavinkit state-dict key -> official key."""
    return _apply(key, _TO_OFFICIAL)


def config_from_official(**kwargs: Any) -> STVAEConfig:
    """An :class:`STVAEConfig` from official ``AutoencoderKLSTVAE`` constructor arguments.

    Architectural arguments map to config fields; ``tile_sample_min_size(_t)``, ``load_path``,
    ``use_checkpoint`` and the (only valid) block type / activation names are accepted and checked, not stored.
    Extra lavinkit fields (``causal_norm``, ``latent_shift``...) may be passed too.
    """
    kw = dict(kwargs)
    for name, expected in (("down_block_types", "STVAEDownBlock3D"), ("up_block_types", "STVAEUpBlock3D")):
        types = kw.get(name)
        if types is not None and any(t != expected for t in types):
            raise ValueError(f"stvae_from_official: {name}={types!r}; only {expected!r} exists officially")
    if kw.get("act_fn", "silu") not in ("silu", "swish"):
        raise ValueError(f"stvae_from_official: act_fn={kw['act_fn']!r} is not supported (official uses 'silu')")
    if kw.get("load_path") is not None:
        raise ValueError("stvae_from_official: pass the state dict (load_official_stvae_file), not load_path")
    renames = {"temporal_compression_ratio": "temporal_compression", "use_checkpoint": "gradient_checkpointing"}
    fields = {}
    for key, value in kw.items():
        if key in _NON_ARCH:
            continue
        fields[renames.get(key, key)] = value
    if "temporal_compression" in fields:
        fields["temporal_compression"] = int(fields["temporal_compression"])
    known = set(STVAEConfig.__dataclass_fields__)
    bad = sorted(set(fields) - known)
    if bad:
        raise ValueError(f"stvae_from_official: unknown constructor argument(s) {bad}")
    return STVAEConfig(**{"name": "official", **fields})


def stvae_from_official(state_dict: dict[str, torch.Tensor], *, device=None, dtype=None, **kwargs: Any) -> STVAE:
    """Build an :class:`STVAE` from an official state dict and the official constructor arguments.

    Tensors are converted to ``dtype`` (float32 when ``None``); float16-stored weights are upcast.

    Raises:
        ValueError: listing every missing, unexpected and mis-shaped key (official names).
    """
    cfg = config_from_official(**kwargs)
    model = STVAE(cfg, device="meta")
    expected = {our_key_to_official(k): (k, tuple(v.shape)) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k][1]}"
        for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != expected[k][1]
    )
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if mis_shaped:
            parts.append(f"mis-shaped keys ({len(mis_shaped)}): {mis_shaped}")
        raise ValueError("stvae_from_official: state dict does not match the official ST-VAE built from "
                         f"{kwargs or 'the default arguments'}:\n  " + "\n  ".join(parts))
    dtype = dtype or torch.float32
    ours = {expected[k][0]: v.to(dtype=dtype) for k, v in state_dict.items()}
    model = STVAE(cfg, device=device, dtype=dtype)
    model.load_state_dict(ours, strict=True)
    return model


def stvae_to_official(vae: STVAE) -> dict[str, torch.Tensor]:
    """The state dict of ``vae`` under the official key names (loadable by ``AutoencoderKLSTVAE``)."""
    return {our_key_to_official(k): v for k, v in vae.state_dict().items()}


def load_official_stvae_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official ST-VAE checkpoint: ``.safetensors``, or a torch file (``weights_only=True``) whose
    weights may sit under ``["state_dict"]`` (as in the released ``stvae.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such ST-VAE checkpoint: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors (or a dict with a 'state_dict' entry)")
    return dict(obj)
