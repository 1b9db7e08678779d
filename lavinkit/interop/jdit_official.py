"""Official LaVin-DiT J-DiT checkpoints <-> lavinkit :class:`~lavinkit.models.jdit.JDiT`.

The official ``LaVinDiT`` constructor arguments map onto :class:`JDiTConfig` (same meaning of
``kv_group``: query heads per key/value head). Every official tensor has exactly one lavinkit
counterpart with the same shape; :func:`official_to_lavinkit_keys` / :func:`lavinkit_to_official_keys`
rename state dicts without building a model, and loading is strict (missing, unexpected and
mis-shaped keys are all reported).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch

from lavinkit.models.jdit import JDiT, JDiTConfig

# Official constructor of the released model (LaVinDiT_3B_2).
OFFICIAL_3B_KWARGS: dict[str, Any] = dict(
    patch_size=(2, 2), in_channels=16, hidden_size=2304, depth=22, num_heads=32, kv_group=4,
    drop_path=0.0, uncond_ratio=0.0,
)
OFFICIAL_KWARGS = ("patch_size", "in_channels", "hidden_size", "depth", "num_heads", "kv_group", "drop_path", "uncond_ratio")

_STREAMS = {"context": "cond", "target": "x"}
_MLP = {"fc1_g": "gate_proj", "fc1_x": "up_proj", "fc2": "down_proj"}
_ATTN = {"q": "q", "k": "k", "v": "v", "q_norm": "qnorm", "k_norm": "knorm", "out": "proj"}
_FIXED = {
    "prompt_embed": "prompt_embed",
    "answer_embed": "answer_embed",
    "context_embed.proj": "cond_embedder.0",
    "context_embed.norm": "cond_embedder.1",
    "target_embed.proj": "x_embedder.0",
    "target_embed.norm": "x_embedder.1",
    "time_embed.mlp.0": "t_embedder.mlp.0",
    "time_embed.mlp.2": "t_embedder.mlp.2",
    "final.modulation": "final_layer.adaLN_modulation.1",
    "final.linear": "final_layer.linear",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(context|target)\.(\w+)(?:\.(\w+))?\.(weight|bias)$")
_OFFICIAL_BLOCK = re.compile(
    r"^blocks\.(\d+)\.(?:joint_attn\.(cond|x)_(q|k|v|qnorm|knorm|proj)|(cond|x)_mlp\.(gate_proj|up_proj|down_proj)"
    r"|(cond|x)_modulation\.1)\.(weight|bias)$"
)


def lavinkit_key_to_official(key: str) -> str:
    """Official name of a lavinkit J-DiT parameter name. Raises KeyError for an unknown name."""
    for ours, theirs in _FIXED.items():
        if key == ours or key.startswith(ours + "."):
            return theirs + key[len(ours):]
    m = _BLOCK.match(key)
    if m:
        i, stream, module, sub, leaf = m.groups()
        s = _STREAMS[stream]
        if module in _ATTN and sub is None:
            return f"blocks.{i}.joint_attn.{s}_{_ATTN[module]}.{leaf}"
        if module == "mlp" and sub in _MLP:
            return f"blocks.{i}.{s}_mlp.{_MLP[sub]}.{leaf}"
        if module == "modulation" and sub is None:
            return f"blocks.{i}.{s}_modulation.1.{leaf}"
    raise KeyError(f"no official J-DiT name for lavinkit key {key!r}")


def official_key_to_lavinkit(key: str) -> str:
    """lavinkit name of an official J-DiT parameter name. Raises KeyError for an unknown name."""
    for ours, theirs in _FIXED.items():
        if key == theirs or key.startswith(theirs + "."):
            return ours + key[len(theirs):]
    m = _OFFICIAL_BLOCK.match(key)
    if m:
        i, a_s, a_m, m_s, m_m, mod_s, leaf = m.groups()
        inv_s = {v: k for k, v in _STREAMS.items()}
        if a_s:
            return f"blocks.{i}.{inv_s[a_s]}.{ {v: k for k, v in _ATTN.items()}[a_m] }.{leaf}"
        if m_s:
            return f"blocks.{i}.{inv_s[m_s]}.mlp.{ {v: k for k, v in _MLP.items()}[m_m] }.{leaf}"
        return f"blocks.{i}.{inv_s[mod_s]}.modulation.{leaf}"
    raise KeyError(f"no lavinkit J-DiT name for official key {key!r}")


def config_from_official(**kwargs: Any) -> JDiTConfig:
    """:class:`JDiTConfig` from official ``LaVinDiT`` constructor arguments (defaults: LaVinDiT_3B_2)."""
    unknown = set(kwargs) - set(OFFICIAL_KWARGS)
    if unknown:
        raise TypeError(f"unknown official J-DiT constructor argument(s) {sorted(unknown)}; known: {OFFICIAL_KWARGS}")
    args = {**OFFICIAL_3B_KWARGS, **kwargs}
    if args["uncond_ratio"]:
        warnings.warn(
            f"official uncond_ratio={args['uncond_ratio']} is a training-time context-dropout rate; in lavinkit "
            "it is set on the training module, not on the model",
            stacklevel=2,
        )
    return JDiTConfig(
        patch_size=tuple(args["patch_size"]) if not isinstance(args["patch_size"], int) else args["patch_size"],
        in_channels=args["in_channels"],
        hidden_size=args["hidden_size"],
        depth=args["depth"],
        num_heads=args["num_heads"],
        kv_group=args["kv_group"],
        drop_path=float(args["drop_path"]),
    )


def official_kwargs_from_config(config: JDiTConfig) -> dict[str, Any]:
    """Official constructor arguments that build the same architecture as ``config``.

    Raises ValueError when ``config`` uses options the official code does not have.
    """
    from lavinkit.models.jdit.config import official_mlp_hidden_size

    if config.rope_axes_dims is not None and tuple(config.rope_axes_dims) != (config.head_dim // 3,) * 3:
        raise ValueError(f"J-DiT config with rope_axes_dims={config.rope_axes_dims} has no official equivalent")
    if config.mlp_hidden_size not in (None, official_mlp_hidden_size(config.hidden_size)):
        raise ValueError(f"J-DiT config with mlp_hidden_size={config.mlp_hidden_size} has no official equivalent")
    for option in ("pair_embedding", "query_residual", "spatial_position_embedding"):  # not in the official model
        if getattr(config, option):
            raise ValueError(f"J-DiT config with {option}=True has no official equivalent")
    return dict(
        patch_size=list(config.patch_size), in_channels=config.in_channels, hidden_size=config.hidden_size,
        depth=config.depth, num_heads=config.num_heads, kv_group=config.kv_group, drop_path=config.drop_path,
        uncond_ratio=0.0,
    )


def _expected_shapes(config: JDiTConfig) -> dict[str, torch.Size]:
    model = JDiT(config, device="meta")
    return {k: v.shape for k, v in model.state_dict().items()}


def official_to_lavinkit_state_dict(state_dict: dict[str, torch.Tensor], config: JDiTConfig) -> dict[str, torch.Tensor]:
    """Rename an official state dict to lavinkit names, strictly checked against ``config``.

    Raises:
        KeyError: the message lists missing keys, unexpected keys and shape mismatches (official names).
    """
    expected = _expected_shapes(config)
    out, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        try:
            ours = official_key_to_lavinkit(key)
        except KeyError:
            unexpected.append(key)
            continue
        if ours not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[ours]):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[ours])}")
        else:
            out[ours] = value
    missing = [lavinkit_key_to_official(k) for k in expected if k not in out and lavinkit_key_to_official(k) not in state_dict]
    if missing or unexpected or mismatched:
        raise KeyError(_mismatch_message("official J-DiT state dict", config, missing, unexpected, mismatched))
    return out


def _mismatch_message(what, config, missing, unexpected, mismatched) -> str:
    lines = [f"{what} does not match the model (hidden_size={config.hidden_size}, depth={config.depth}, "
             f"num_heads={config.num_heads}, kv_group={config.kv_group}, patch_size={config.patch_size}, "
             f"in_channels={config.in_channels}):"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else "")
            lines.append(f"  {title} ({len(keys)}): {shown}")
    return "\n".join(lines)


def jdit_from_official(
    state_dict: dict[str, torch.Tensor], *, device=None, dtype: torch.dtype | None = torch.float32, **kwargs: Any
) -> JDiT:
    """Build a :class:`JDiT` from an official state dict.

    Args:
        state_dict: official ``LaVinDiT`` state dict (e.g. ``safetensors.torch.load_file(...)``).
        device, dtype: of the returned model (default float32 on CPU: float16-stored weights are upcast);
            ``dtype=None`` keeps the stored dtype. Meta tensors give a meta model.
        **kwargs: official constructor arguments (``patch_size``, ``in_channels``, ``hidden_size``,
            ``depth``, ``num_heads``, ``kv_group``, ``drop_path``, ``uncond_ratio``); defaults LaVinDiT_3B_2.
    """
    config = config_from_official(**kwargs)
    state = official_to_lavinkit_state_dict(state_dict, config)
    model = JDiT(config, device="meta")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.freeze_dead_parameters(config.freeze_dead_params)
    if device is not None:
        model = model.to(device)
    return model


def lavinkit_to_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lavinkit J-DiT state dict to the official names (tensors are shared, not copied)."""
    return {lavinkit_key_to_official(k): v for k, v in state_dict.items()}


def jdit_to_official(model: JDiT) -> dict[str, torch.Tensor]:
    """The official-layout state dict of ``model`` (loadable by ``LaVinDiT.load_state_dict(strict=True)``)."""
    return lavinkit_to_official_state_dict(model.state_dict())
