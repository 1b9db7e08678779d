"""Attention backends selected by name (``sdpa`` default, ``naive`` reference); see :mod:`.registry`."""

from lavinkit.nn.attention import backends as _backends  # noqa: F401  (registers the built-in backends)
from lavinkit.nn.attention.backends import naive_attention, sdpa_attention
from lavinkit.nn.attention.registry import (
    AttentionFn,
    attention_name,
    available_attention,
    get_attention,
    register_attention,
)

__all__ = [
    "AttentionFn",
    "attention_name",
    "available_attention",
    "get_attention",
    "naive_attention",
    "register_attention",
    "sdpa_attention",
]
