"""Token-pair rules for structured in-context attention, shared by FlexAttention and the dense references.

A rule is ``rule(seg, role, row, q_idx, kv_idx) -> bool tensor`` where ``seg`` and ``role`` are the per-token
segment ids and roles ``[R, L]`` of a :class:`~lavinkit.nn.attention.layout.JointLayout` (``R = 1`` when all
rows share a layout), ``row`` indexes ``R`` and ``q_idx`` / ``kv_idx`` are token indices; all arguments
broadcast. The same function builds a dense mask (:meth:`JointLayout.dense_mask`, the CPU reference path) and a
FlexAttention ``mask_mod`` (:func:`lavinkit.nn.attention.cores.flex.mask_mod`), so the two cannot drift apart.

Rules (arXiv 2411.11505 trains with ``full``; the structured ones follow the in-context layouts of
``docs/reference/perf-and-variants.md`` s.5.2):

* ``full``: every token attends every (valid) token.
* ``pair_local``: a context token attends the tokens of its own example pair; the query and the target
  attend everything. Context cost drops from ``S^2`` to ``sum_p n_p^2``.
* ``pair_query``: as ``pair_local``, and context tokens also attend the query item (compare each example
  with the query without example-to-example mixing).
* ``no_reverse``: everything as ``full`` except that context tokens do not attend the noisy target.
* ``segment_local``: each example pair, and the query + target, attend only within themselves (Infini-attention's
  local path; the rest of the sequence is reached through the compressive memory).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lavinkit.nn.attention.layout import ROLE_IDS

Rule = Callable[..., torch.Tensor]

_QUERY, _TARGET = ROLE_IDS["query"], ROLE_IDS["target"]


def _is_context(role: torch.Tensor) -> torch.Tensor:
    return (role >= 0) & (role < _QUERY)


def full(seg, role, row, q_idx, kv_idx):
    """Every pair allowed (padding is excluded by the layout's key mask)."""
    return (q_idx >= 0) & (kv_idx >= 0)


def pair_local(seg, role, row, q_idx, kv_idx):
    """Context tokens attend their own example pair; query, target (and padding rows) attend everything."""
    q_ctx = _is_context(role[row, q_idx])
    return ~q_ctx | (seg[row, q_idx] == seg[row, kv_idx])


def pair_query(seg, role, row, q_idx, kv_idx):
    """``pair_local`` plus context tokens attending the query item."""
    return pair_local(seg, role, row, q_idx, kv_idx) | (role[row, kv_idx] == _QUERY)


def no_reverse(seg, role, row, q_idx, kv_idx):
    """Context tokens do not attend the noisy target; query and target attend everything."""
    return ~_is_context(role[row, q_idx]) | (role[row, kv_idx] != _TARGET)


def merged_segments(seg: torch.Tensor, role: torch.Tensor) -> torch.Tensor:
    """Segment ids with the noisy target merged into the query's segment (``[R, L]``)."""
    return torch.where(role == _TARGET, seg - 1, seg)


def segment_local(seg, role, row, q_idx, kv_idx):
    """Every token attends its own segment only: an example pair, or query + target together (the local path
    of Infini-attention)."""
    merged = merged_segments(seg, role)
    return (merged[row, q_idx] == merged[row, kv_idx]) | (role[row, q_idx] < 0)


RULES: dict[str, Rule] = {"full": full, "segment_local": segment_local, "pair_local": pair_local, "pair_query": pair_query, "no_reverse": no_reverse}


def get_rule(name: str | Rule) -> Rule:
    """A rule by name (see :data:`RULES`) or a callable with the rule signature."""
    if callable(name):
        return name
    if name not in RULES:
        raise KeyError(f"unknown attention mask rule {name!r}; available: {', '.join(sorted(RULES))}")
    return RULES[name]
