"""Validated J-DiT configuration with named presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lavinkit.nn.rope import equal_axes_dims


def official_mlp_hidden_size(hidden_size: int) -> int:
    """SwiGLU width of the official code: ``int((4 * D * 2 / 3) / 64) * 64`` (truncating)."""
    return int((4 * hidden_size * 2 / 3) / 64) * 64


@dataclass
class JDiTConfig:
    """J-DiT hyper-parameters.

    Attributes:
        patch_size: spatial patch (pH, pW) on the latent grid (an int means square).
        in_channels: latent channels (output channels are the same).
        hidden_size: transformer width D.
        depth: number of dual-stream blocks.
        num_heads: query heads; ``head_dim = hidden_size // num_heads``.
        kv_group: query heads per key/value head (official meaning: group SIZE);
            ``num_kv_heads = num_heads // kv_group``.
        mlp_hidden_size: SwiGLU width; ``None`` = the official formula (:func:`official_mlp_hidden_size`).
        rope_axes_dims: head-dim channels rotated by the (t, h, w) positions; ``None`` = three equal
            parts (official; needs ``head_dim % 6 == 0``). For head_dim 64 use e.g. (16, 24, 24).
        rope_theta: RoPE base.
        frequency_dim: size of the sinusoidal timestep features.
        norm_eps: eps of every RMSNorm (pre/post sandwich norms, QK norms, final norm).
        attention: softmax backend: a name in :mod:`lavinkit.nn.attention` (``sdpa``, ``naive``) or a callable/class;
            used by the attention core for its dense calls.
        attention_core: attention core over the joint sequence (:mod:`lavinkit.nn.attention.plugins`): a
            registered name (``full``, ``flex``, ``pair_local``, ``factorized``, ``infini``, ...), an import path
            ``package.module:Class`` or a class; ``None`` = ``full`` (the official full joint attention).
        attention_core_options: keyword options of the core (e.g. ``{rule: pair_local}`` for ``flex``,
            ``{update: delta}`` for ``infini``).
        token_mixer: a token mixer that replaces the whole attention sub-layer (e.g. ``diffussm``); excludes
            ``attention_core``.
        token_mixer_options: keyword options of the mixer.
        activation_checkpointing: recompute every block in backward (non-reentrant checkpoint).
        drop_path: stochastic-depth rate on every residual branch (same rate in every block; 0 = off).
        freeze_dead_params: set ``requires_grad=False`` on the last block's context-stream parameters
            that cannot affect the output (query projection, query norm, output projection, MLP; the
            official layout keeps them, see official-arch s.2.7), so DDP sees no unused parameters.
        pair_embedding: not in the official model (default off). One more patch embedding adds to every
            token the latent at the same place in its partner: an example input sees its example target
            and vice versa, the target tokens see the query (see :func:`~lavinkit.models.jdit.sequence.
            pair_partners`). The joint attention can learn this alignment itself, but at demo scale it
            takes thousands of steps; with it, every token carries local evidence of the task from step 0.
        query_residual: not in the official model (default off). The output layer predicts the answer minus the
            query at the same place (``x1 = query + out``) and the velocity is derived from that data estimate,
            ``v = (x1 - x_t) / max(1 - t, 0.05)``. With the zero-initialised output layer the untrained model
            answers with the query itself (the identity baseline), so its capacity goes to what the task changes;
            restorations start at the query instead of at a blur of the mean latent. Sample it with Euler or
            ``HeunSampler(final_step="euler")``: a Heun step ending at ``t = 1`` evaluates the velocity where only
            the floored gap defines it (the pipeline and ``JDiTModule`` refuse that sampler for such a model).
        spatial_position_embedding: not in the official model (default off). Every token also gets an embedding of
            its absolute (row, column) place in its frame (:class:`~lavinkit.nn.embed.SpatialPositionEmbed`, zero at
            initialisation). The official model has positions only through RoPE, i.e. offsets between tokens, which
            cannot say "the mirrored place" (a horizontal flip) or "near the border".
    """

    patch_size: tuple[int, int] = (2, 2)
    in_channels: int = 16
    hidden_size: int = 2304
    depth: int = 22
    num_heads: int = 32
    kv_group: int = 4
    mlp_hidden_size: int | None = None
    rope_axes_dims: tuple[int, int, int] | None = None
    rope_theta: float = 10000.0
    frequency_dim: int = 256
    norm_eps: float = 1e-6
    attention: str | Callable[..., Any] = "sdpa"
    attention_core: str | type | None = None
    attention_core_options: dict[str, Any] = field(default_factory=dict)
    token_mixer: str | type | None = None
    token_mixer_options: dict[str, Any] = field(default_factory=dict)
    activation_checkpointing: bool = False
    drop_path: float = 0.0
    freeze_dead_params: bool = True
    pair_embedding: bool = False
    query_residual: bool = False
    spatial_position_embedding: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.patch_size, int):
            self.patch_size = (self.patch_size, self.patch_size)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if len(self.patch_size) != 2 or min(self.patch_size) < 1:
            raise ValueError(f"JDiTConfig.patch_size must be a positive int or (pH, pW), got {self.patch_size}")
        for name in ("in_channels", "hidden_size", "depth", "num_heads", "kv_group", "frequency_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"JDiTConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"JDiTConfig.hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.num_heads % self.kv_group:
            raise ValueError(
                f"JDiTConfig.num_heads ({self.num_heads}) must be divisible by kv_group ({self.kv_group}); "
                "kv_group is the number of query heads per key/value head"
            )
        if self.mlp_hidden_size is not None and self.mlp_hidden_size < 1:
            raise ValueError(f"JDiTConfig.mlp_hidden_size must be positive or None, got {self.mlp_hidden_size}")
        if self.rope_axes_dims is None:
            try:
                equal_axes_dims(self.head_dim, 3)
            except ValueError as err:
                raise ValueError(f"JDiTConfig.rope_axes_dims: {err}") from None
        else:
            self.rope_axes_dims = tuple(int(d) for d in self.rope_axes_dims)
            if len(self.rope_axes_dims) != 3 or any(d < 2 or d % 2 for d in self.rope_axes_dims):
                raise ValueError(f"JDiTConfig.rope_axes_dims must be three positive even ints, got {self.rope_axes_dims}")
            if sum(self.rope_axes_dims) != self.head_dim:
                raise ValueError(
                    f"JDiTConfig.rope_axes_dims {self.rope_axes_dims} must sum to head_dim {self.head_dim}"
                )
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"JDiTConfig.drop_path must be in [0, 1), got {self.drop_path}")
        if self.norm_eps <= 0:
            raise ValueError(f"JDiTConfig.norm_eps must be positive, got {self.norm_eps}")
        if not isinstance(self.attention, str) and not callable(self.attention):
            raise ValueError(f"JDiTConfig.attention must be a backend name or a callable, got {self.attention!r}")
        if isinstance(self.attention, str):
            from lavinkit.nn.attention import available_attention

            if self.attention not in available_attention():
                raise ValueError(
                    f"JDiTConfig.attention: unknown backend {self.attention!r}; "
                    f"registered: {', '.join(available_attention())}"
                )

        self._check_plugins()

    def _check_plugins(self) -> None:
        from lavinkit.nn.attention.plugins import get_core, get_mixer

        for name, getter in (("attention_core", get_core), ("token_mixer", get_mixer)):
            spec = getattr(self, name)
            if spec is None:
                continue
            try:
                getter(spec)
            except (KeyError, TypeError) as err:
                raise ValueError(f"JDiTConfig.{name}: {err.args[0]}") from None
        for name in ("attention_core_options", "token_mixer_options"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, dict):
                raise ValueError(f"JDiTConfig.{name} must be a mapping of keyword options, got {value!r}")
        if self.token_mixer is not None and self.attention_core is not None:
            raise ValueError(
                f"JDiTConfig: token_mixer {self.token_mixer!r} replaces the whole attention sub-layer, so "
                f"attention_core {self.attention_core!r} would never run; set only one of them"
            )
        if self.token_mixer is None and self.token_mixer_options:
            raise ValueError("JDiTConfig.token_mixer_options is set but token_mixer is not")
        if self.token_mixer is not None and self.attention_core_options:
            raise ValueError("JDiTConfig.attention_core_options is set but a token_mixer replaces the attention core")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads // self.kv_group

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden_size or official_mlp_hidden_size(self.hidden_size)

    @property
    def axes_dims(self) -> tuple[int, int, int]:
        return self.rope_axes_dims or equal_axes_dims(self.head_dim, 3)

    @property
    def patch_dim(self) -> int:
        return self.patch_size[0] * self.patch_size[1] * self.in_channels

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> JDiTConfig:
        """A named preset (see :data:`PRESETS`) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown J-DiT preset {name!r}; available: {', '.join(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"JDiTConfig has no field(s) {sorted(unknown)} (preset {name!r})")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the attention backend is stored by registry name)."""
        out = dataclasses.asdict(self)
        if not isinstance(self.attention, str):
            from lavinkit.nn.attention import attention_name

            name = attention_name(self.attention)
            if name is None:
                raise ValueError(
                    f"JDiTConfig.attention {self.attention!r} is not registered; register it with "
                    "lavinkit.nn.attention.register_attention to save the config"
                )
            out["attention"] = name
        from lavinkit.nn.attention.plugins import CORES, MIXERS

        for name, registry in (("attention_core", CORES), ("token_mixer", MIXERS)):
            spec = getattr(self, name)
            if isinstance(spec, type):
                registered = registry.name_of(spec)
                out[name] = registered or f"{spec.__module__}:{spec.__qualname__}"
        out["patch_size"] = list(self.patch_size)
        if self.rope_axes_dims is not None:
            out["rope_axes_dims"] = list(self.rope_axes_dims)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JDiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"J-DiT config has unknown field(s) {sorted(unknown)}")
        return cls(**data)


# Presets: the official released model, a tiny tester, and the paper's smaller scales with
# kernel-friendly head dims (64 / 128, RoPE split favouring the spatial axes).
PRESETS: dict[str, dict[str, Any]] = {
    "official-3b": dict(patch_size=(2, 2), in_channels=16, hidden_size=2304, depth=22, num_heads=32, kv_group=4),
    "1b": dict(
        patch_size=(2, 2), in_channels=16, hidden_size=1536, depth=16, num_heads=12, kv_group=4,
        rope_axes_dims=(32, 48, 48),
    ),
    "0.1b": dict(
        patch_size=(2, 2), in_channels=16, hidden_size=512, depth=12, num_heads=8, kv_group=4,
        rope_axes_dims=(16, 24, 24),
    ),
    "tiny": dict(patch_size=(2, 2), in_channels=16, hidden_size=96, depth=2, num_heads=2, kv_group=2),
}
