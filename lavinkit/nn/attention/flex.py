"""``flex``: joint attention through FlexAttention (``torch.nn.attention.flex_attention``) with a token rule.

The rule (:mod:`lavinkit.nn.attention.rules`: ``full``, ``pair_local``, ``pair_query``, ``no_reverse`` or a
callable) becomes a ``mask_mod`` over the layout's per-token segment ids and roles, and ``create_block_mask``
turns it into a ``BlockMask`` (fully masked 128 x 128 tiles are skipped). Block masks are cached per
``(layout.key, rule, batch, device)``. On CUDA the kernel is ``torch.compile(flex_attention)``; elsewhere the eager
path (forward only: torch raises for FlexAttention backward on CPU, ``pytorch/pytorch`` #148752, so this core
refuses it up front). The reference (CPU tests, CPU training) is the softmax backend with the dense mask of the
same rule (:meth:`AttentionCore.reference`).
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict

import torch

from lavinkit.nn.attention.layout import JointLayout
from lavinkit.nn.attention.plugins import AttentionCore, Capabilities, register_core
from lavinkit.nn.attention.rules import get_rule


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def mask_mod(layout: JointLayout, rule, batch: int | None, device):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for ``rule`` on ``layout`` (queries from ``query_start``).

    ``batch=None`` means all rows share the layout and there is no key padding (the mask broadcasts over B).
    """
    seg, role = layout.segment_ids(device), layout.roles(device)  # [R, L]
    per_row = seg.shape[0] > 1
    valid = None
    if layout.key_mask is not None and batch is not None:
        valid = layout.key_mask.to(device).reshape(batch, -1)  # [B, L]
    qs = layout.query_start

    def mod(b, h, q_idx, kv_idx):
        row = b if per_row else b * 0
        allowed = rule(seg, role, row, q_idx + qs, kv_idx)
        if valid is not None:
            allowed = allowed & valid[b, kv_idx]
        return allowed

    return mod


@register_core("flex")
class FlexJointAttention(AttentionCore):
    """FlexAttention over the joint sequence with a block mask built from a token rule.

    Args:
        rule: token rule name (``full``, ``pair_local``, ``pair_query``, ``no_reverse``) or callable.
        compile: compile the kernel (default: on CUDA only).
        block_size: BlockMask tile size.
        cache_size: block masks kept (least recently used dropped).
    """

    capabilities = Capabilities(
        trains_on_cpu=False,
        needs_compile=True,
        cpu_reason="FlexAttention has no backward on CPU/MPS (torch raises NotImplementedError; pytorch/pytorch "
        "#148752); the forward runs eagerly there",
    )

    def __init__(self, num_heads, num_kv_heads, head_dim, backend="sdpa", rule="full", compile: bool | None = None,
                 block_size: int = 128, cache_size: int = 16):
        super().__init__(num_heads, num_kv_heads, head_dim, backend)
        get_rule(rule)
        self.rule = rule
        self.compile, self.block_size, self.cache_size = compile, block_size, cache_size
        self._masks: OrderedDict = OrderedDict()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule!r}"

    def block_mask(self, layout: JointLayout, batch: int, device):
        """The cached ``BlockMask`` of this core's rule on ``layout``."""
        from torch.nn.attention.flex_attention import create_block_mask

        b = batch if (layout.key_mask is not None or not layout.uniform) else None
        key = (layout.key, str(self.rule), b, str(device), self.block_size)
        if key in self._masks:
            self._masks.move_to_end(key)
            return self._masks[key]
        mod = mask_mod(layout, get_rule(self.rule), b, device)
        mask = create_block_mask(mod, b, None, layout.query_length, layout.length, device=device,
                                 BLOCK_SIZE=self.block_size)
        self._masks[key] = mask
        if len(self._masks) > self.cache_size:
            self._masks.popitem(last=False)
        return mask

    def attend(self, q, k, v, layout: JointLayout):
        from torch.nn.attention.flex_attention import flex_attention

        q, k = layout.rotate(q, k)
        mask = self.block_mask(layout, q.shape[0], q.device)
        use_compile = q.is_cuda if self.compile is None else self.compile
        fn = _compiled_flex() if use_compile else flex_attention
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            warnings.filterwarnings("ignore", message=".*unfused implementation.*")
            return fn(q, k, v, block_mask=mask, scale=layout.scale, enable_gqa=q.shape[1] != k.shape[1])
