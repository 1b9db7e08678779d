"""Named registry of attention backends.

A backend is one function with the signature::

    fn(q, k, v, *, attn_mask=None, scale=None) -> out

* ``q``: ``[B, H, Lq, D]``; ``k``, ``v``: ``[B, Hkv, Lk, D]`` with ``H % Hkv == 0`` (grouped-query
  attention: query head ``h`` reads key/value head ``h // (H // Hkv)``; the backend handles the grouping).
* ``attn_mask``: ``None``, a boolean tensor broadcastable to ``[B, H, Lq, Lk]`` (``True`` = may attend,
  the SDPA convention) or a float tensor added to the scores.
* ``scale``: softmax scale, ``D ** -0.5`` when ``None``.
* returns ``[B, H, Lq, D]``.

Register with the decorator and select by name anywhere a config takes ``attention: str``::

    @register_attention("my_attention")
    def my_attention(q, k, v, *, attn_mask=None, scale=None): ...

``tests/nn/test_attention.py`` checks every registered backend against ``naive`` automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class AttentionFn(Protocol):
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
    ) -> torch.Tensor: ...


_REGISTRY: dict[str, AttentionFn] = {}


def register_attention(name: str) -> Callable[[AttentionFn], AttentionFn]:
    """Decorator registering ``fn`` as attention backend ``name`` (names are unique)."""

    def decorator(fn: AttentionFn) -> AttentionFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"attention backend {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = fn
        return fn

    return decorator


def available_attention() -> list[str]:
    """Names of the registered attention backends, sorted."""
    return sorted(_REGISTRY)


def get_attention(spec: str | AttentionFn | type) -> AttentionFn:
    """Resolve an attention backend from a registry name, a function, or a class.

    A class is instantiated without arguments and must be callable with the backend signature.

    Raises:
        KeyError: unknown name (the message lists the registered backends).
        TypeError: ``spec`` is neither a string nor callable.
    """
    if isinstance(spec, str):
        if spec not in _REGISTRY:
            raise KeyError(
                f"unknown attention backend {spec!r}; registered: {', '.join(available_attention())} "
                "(register new ones with lavinkit.nn.attention.register_attention)"
            )
        return _REGISTRY[spec]
    if isinstance(spec, type):
        return spec()
    if callable(spec):
        return spec
    raise TypeError(f"attention must be a registry name or a callable, got {type(spec).__name__}")


def attention_name(fn: AttentionFn) -> str | None:
    """The registry name of ``fn``, or ``None`` when it is not registered."""
    for name, registered in _REGISTRY.items():
        if registered is fn:
            return name
    return None
