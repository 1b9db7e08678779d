"""The two plug points of the J-DiT block: attention cores and token mixers.

**Attention core** (softmax attention and its structured / memory variants). The block projects both streams,
applies the QK RMSNorm, concatenates ``[context; target]`` and calls::

    core(q, k, v, layout) -> o
    q: [B, Hq, Lq, hd] (un-rotated; Lq = L - layout.query_start)   k, v: [B, Hkv, L, hd] (k un-rotated)
    o: [B, Hq, Lq, hd]

with a :class:`~lavinkit.nn.attention.layout.JointLayout` (segments, ``(T, H, W)``, position ids, ``rope``).
Cores rotate q/k themselves (``layout.rotate(q, k)``), so position-free paths can use un-rotated q/k. A core is an
``nn.Module`` and may own parameters (Infini-attention's gates).

**Token mixer** (state-space layers, anything that is not attention over q/k/v). Replaces the whole attention
sub-layer inside the sandwich norm of both streams (the block keeps modulation, norms, gates and MLP)::

    mixer(a_ctx, a_tgt, c_ctx, c_tgt, layout) -> (o_ctx | None, o_tgt)
    a_*: [B, L_*, D] modulated, pre-normed hidden states   c_*: [B, D] conditioning   o_*: [B, L_*, D]

Both kinds declare :class:`Capabilities`; the base classes refuse clearly what a variant declared it cannot do.
Register with ``@register_core("name")`` / ``@register_mixer("name")`` and select from a config
(``attention_core: name`` / ``token_mixer: name``, or an import path ``package.module:Class``), from Python
(``JDiTConfig(attention_core=...)``), or temporarily on a built model with :func:`use_attention`.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lavinkit.nn.attention.layout import JointLayout
from lavinkit.nn.attention.registry import get_attention


@dataclass(frozen=True)
class Capabilities:
    """What a variant supports; the kit refuses the rest with a clear error.

    Attributes:
        trains_on_cpu: backward runs on CPU (``False``: forward only there).
        supports_gqa: accepts fewer key/value heads than query heads.
        supports_key_mask: handles padded contexts (``context_lengths``, batched CFG).
        needs_compile: only fast under ``torch.compile`` (still correct eagerly).
        exact: equals full softmax attention (checked against ``naive`` by the contract test).
        needs_segments: needs the context to be whole in-context items (``2P + 1`` of them).
        cpu_reason: why it cannot train on CPU (shown in the error and in skipped tests).
    """

    trains_on_cpu: bool = True
    supports_gqa: bool = True
    supports_key_mask: bool = True
    needs_compile: bool = False
    exact: bool = False
    needs_segments: bool = False
    cpu_reason: str = ""


class PluginRegistry:
    """Name -> class registry with a decorator, import-path lookup and errors that list the names."""

    def __init__(self, kind: str, base: type, decorator: str):
        self.kind, self.base, self.decorator = kind, base, decorator
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Decorator registering a subclass of the base class under ``name`` (unique)."""

        def decorator(cls: type) -> type:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"@{self.decorator}({name!r}) needs a subclass of {self.base.__name__}, got {cls!r}")
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._classes[name]!r})")
            self._classes[name] = cls
            cls.name = name
            return cls

        return decorator

    def unregister(self, name: str) -> None:
        self._classes.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def get(self, spec: str | type) -> type:
        """Resolve a registered name, an import path (``pkg.mod:Class`` or ``pkg.mod.Class``) or a class."""
        if isinstance(spec, type):
            if not issubclass(spec, self.base):
                raise TypeError(f"{self.kind} class {spec.__name__} must subclass {self.base.__name__}")
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"{self.kind} must be a registered name, an import path or a class, got {spec!r}")
        if spec in self._classes:
            return self._classes[spec]
        if ":" in spec or "." in spec:
            module, _, attr = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
            try:
                cls = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise KeyError(f"cannot import {self.kind} {spec!r}: {err}") from None
            return self.get(cls)
        raise KeyError(
            f"unknown {self.kind} {spec!r}; registered: {', '.join(self.names()) or '(none)'} "
            f"(register new ones with lavinkit.nn.attention.{self.decorator}, or give an import path pkg.module:Class)"
        )

    def name_of(self, cls: type) -> str | None:
        for name, registered in self._classes.items():
            if registered is cls:
                return name
        return None


# ---------------------------------------------------------------------------------------------- cores
class AttentionCore(nn.Module, metaclass=abc.ABCMeta):
    """Base class of attention cores: ``forward(q, k, v, layout) -> o`` (shapes in the module docstring).

    Subclasses implement :meth:`attend`, set :attr:`capabilities`, and either set :attr:`rule` (the token rule
    their math equals, for the dense reference) or override :meth:`reference`.

    Args:
        num_heads, num_kv_heads, head_dim: the block's attention shape.
        backend: softmax backend (:mod:`lavinkit.nn.attention.registry`) for dense sub-calls.
    """

    name: ClassVar[str] = "core"
    capabilities: ClassVar[Capabilities] = Capabilities()
    rule: ClassVar[str | None] = "full"

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, backend: str | Callable = "sdpa"):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.backend_name = backend if isinstance(backend, str) else getattr(backend, "__name__", "custom")
        self.backend = get_attention(backend)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, backend={self.backend_name}"

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging (e.g. learned gates); ``{}`` by default."""
        return {}

    def check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout) -> None:
        """Refuse what this core declared it cannot do (raises ValueError / NotImplementedError)."""
        caps, name = self.capabilities, self.name
        if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
            raise ValueError(f"attention core {name!r}: q/k/v must be [B, H, L, hd], got {tuple(q.shape)}, {tuple(k.shape)}")
        hq, hkv = q.shape[1], k.shape[1]
        if v.shape[1] != hkv or hq % hkv:
            raise ValueError(
                f"attention core {name!r}: query heads ({hq}) must be a multiple of key/value heads ({hkv}, {v.shape[1]})"
            )
        if hq != hkv and not caps.supports_gqa:
            raise ValueError(
                f"attention core {name!r} does not support grouped-query attention ({hq} query heads, {hkv} kv heads); "
                "set kv_group: 1"
            )
        if k.shape[2] != layout.length or q.shape[2] != layout.query_length:
            raise ValueError(
                f"attention core {name!r}: sequence lengths q {q.shape[2]}, k {k.shape[2]} do not match the layout "
                f"(queries {layout.query_length}, keys {layout.length})"
            )
        if not layout.uniform and not caps.supports_key_mask:
            raise ValueError(
                f"attention core {name!r} does not support key masks (padded contexts from context_lengths, e.g. batched "
                "CFG or context dropout); use it with unpadded batches or choose a core with supports_key_mask"
            )
        if caps.needs_segments:
            if layout.uniform:
                layout.segments  # noqa: B018  (raises when the context is not whole in-context items)
            else:
                layout.segment_ids(q.device)
        if (not caps.trains_on_cpu and q.device.type != "cuda" and torch.is_grad_enabled()
                and any(t.requires_grad for t in (q, k, v))):
            raise NotImplementedError(
                f"attention core {name!r} cannot run backward on {q.device.type}: {caps.cpu_reason or 'not supported'}. "
                "Run it on a GPU, under torch.no_grad() for inference, or train with its reference core"
            )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout) -> torch.Tensor:
        self.check(q, k, v, layout)
        return self.attend(q, k, v, layout)

    @abc.abstractmethod
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout) -> torch.Tensor:
        """The core's attention output ``[B, H, Lq, hd]`` (inputs already checked against its capabilities)."""

    def reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout) -> torch.Tensor:
        """The same math the slow, obvious way: ``naive`` softmax with the dense mask of :attr:`rule`."""
        if self.rule is None:
            raise NotImplementedError(f"attention core {self.name!r} has no reference")
        from lavinkit.nn.attention.backends import naive_attention
        from lavinkit.nn.attention.rules import get_rule

        q, k = layout.rotate(q, k)
        mask = layout.dense_mask(get_rule(self.rule), q.device)
        return naive_attention(q, k, v, attn_mask=mask, scale=layout.scale)


# --------------------------------------------------------------------------------------------- mixers
class TokenMixer(nn.Module, metaclass=abc.ABCMeta):
    """Base class of token mixers: ``forward(a_ctx, a_tgt, c_ctx, c_tgt, layout) -> (o_ctx | None, o_tgt)``.

    Args:
        hidden_size, num_heads, num_kv_heads, head_dim: the block's shape.
        last: the block is the last one (its context output is never used; return ``None`` for it and list
            the parameters that only feed it in :meth:`dead_parameters`).
        device, dtype: parameter placement.
    """

    name: ClassVar[str] = "mixer"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, last: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim = hidden_size, num_heads, num_kv_heads, head_dim
        self.last = last

    def dead_parameters(self) -> list[nn.Parameter]:
        """Parameters that cannot affect the block output (those feeding only the context output of the last block)."""
        return []

    def check(self, a_ctx: torch.Tensor, a_tgt: torch.Tensor, layout: JointLayout) -> None:
        caps, name = self.capabilities, self.name
        if not layout.uniform and not caps.supports_key_mask:
            raise ValueError(f"token mixer {name!r} does not support padded contexts (context_lengths)")
        if caps.needs_segments:
            if layout.uniform:
                layout.segments  # noqa: B018
            else:
                layout.segment_ids(a_tgt.device)
        if (not caps.trains_on_cpu and a_tgt.device.type != "cuda" and torch.is_grad_enabled()
                and (a_ctx.requires_grad or a_tgt.requires_grad)):
            raise NotImplementedError(f"token mixer {name!r} cannot run backward on CPU: {caps.cpu_reason}")

    def forward(self, a_ctx, a_tgt, c_ctx, c_tgt, layout):
        self.check(a_ctx, a_tgt, layout)
        return self.mix(a_ctx, a_tgt, c_ctx, c_tgt, layout)

    @abc.abstractmethod
    def mix(self, a_ctx, a_tgt, c_ctx, c_tgt, layout):
        """``(o_ctx [B, Lc, D] | None, o_tgt [B, Lx, D])`` (inputs already checked against its capabilities)."""


CORES = PluginRegistry("attention core", AttentionCore, "register_core")
MIXERS = PluginRegistry("token mixer", TokenMixer, "register_mixer")


def register_core(name: str) -> Callable[[type], type]:
    """Class decorator: register an :class:`AttentionCore` subclass as ``attention_core: name``."""
    return CORES.register(name)


def register_mixer(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`TokenMixer` subclass as ``token_mixer: name``."""
    return MIXERS.register(name)


def available_cores() -> list[str]:
    return CORES.names()


def available_mixers() -> list[str]:
    return MIXERS.names()


def get_core(spec: str | type) -> type:
    """The core class for a registered name, an import path or a class (KeyError lists the registered names)."""
    return CORES.get(spec)


def get_mixer(spec: str | type) -> type:
    """The mixer class for a registered name, an import path or a class (KeyError lists the registered names)."""
    return MIXERS.get(spec)


def _construct(kind: str, cls: type, args: dict[str, Any], options: dict[str, Any]) -> nn.Module:
    try:
        return cls(**args, **options)
    except TypeError as err:
        raise TypeError(f"{kind} {getattr(cls, 'name', cls.__name__)!r}: bad options {sorted(options)}: {err}") from None


def build_core(spec: str | type, num_heads: int, num_kv_heads: int, head_dim: int, backend: str | Callable = "sdpa",
               options: dict[str, Any] | None = None) -> AttentionCore:
    """Instantiate an attention core with the block's shape and the per-variant ``options``."""
    cls = get_core(spec)
    args = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, backend=backend)
    return _construct("attention core", cls, args, dict(options or {}))


def build_mixer(spec: str | type, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                last: bool = False, options: dict[str, Any] | None = None, device=None, dtype=None) -> TokenMixer:
    """Instantiate a token mixer with the block's shape and the per-variant ``options``."""
    cls = get_mixer(spec)
    args = dict(hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                last=last, device=device, dtype=dtype)
    return _construct("token mixer", cls, args, dict(options or {}))


@contextlib.contextmanager
def use_attention(model: nn.Module, core: str | type, **options: Any) -> Iterator[nn.Module]:
    """Temporarily swap the attention core of every block of ``model`` (e.g. in a notebook)::

        with use_attention(model, "flex", rule="pair_local"):
            v = model(x, t, context)

    New cores are built on the model's device/dtype; parameterised cores start from their initialisation.
    The previous cores come back on exit. Token mixers replace projections and are chosen at construction.
    """
    blocks = [m for m in model.modules() if hasattr(m, "set_core")]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no blocks with an attention core")
    previous = [b.set_core(core, **options) for b in blocks]
    try:
        yield model
    finally:
        for block, old in zip(blocks, previous):
            block.set_core(old)
