"""Attention for the J-DiT: softmax backends, attention cores and token mixers, all selected by name.

* backends (:mod:`.registry`): ``fn(q, k, v, *, attn_mask, scale)``; ``sdpa`` (default) and ``naive`` (reference).
* attention cores (:mod:`.plugins`): ``core(q, k, v, layout)`` over the joint in-context sequence; ``full``
  (default, official), ``flex``, ``pair_local``, ``factorized``, ``infini``.
* token mixers (:mod:`.plugins`): replace the whole attention sub-layer; ``diffussm``.
"""

from lavinkit.nn.attention import backends as _backends  # noqa: F401  (registers the built-in backends)
from lavinkit.nn.attention import cores as _cores  # noqa: F401  (registers full, pair_local, factorized)
from lavinkit.nn.attention import diffussm as _diffussm  # noqa: F401  (registers diffussm)
from lavinkit.nn.attention import flex as _flex  # noqa: F401  (registers flex)
from lavinkit.nn.attention import infini as _infini  # noqa: F401  (registers infini)
from lavinkit.nn.attention.backends import naive_attention, sdpa_attention
from lavinkit.nn.attention.layout import JointLayout, Segment, build_layout
from lavinkit.nn.attention.plugins import (
    AttentionCore,
    Capabilities,
    TokenMixer,
    available_cores,
    available_mixers,
    build_core,
    build_mixer,
    get_core,
    get_mixer,
    register_core,
    register_mixer,
    use_attention,
)
from lavinkit.nn.attention.registry import (
    AttentionFn,
    attention_name,
    available_attention,
    get_attention,
    register_attention,
)

__all__ = [
    "AttentionCore",
    "AttentionFn",
    "Capabilities",
    "JointLayout",
    "Segment",
    "TokenMixer",
    "attention_name",
    "available_attention",
    "available_cores",
    "available_mixers",
    "build_core",
    "build_layout",
    "build_mixer",
    "get_attention",
    "get_core",
    "get_mixer",
    "naive_attention",
    "register_attention",
    "register_core",
    "register_mixer",
    "sdpa_attention",
    "use_attention",
]
