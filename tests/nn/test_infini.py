"""Closed-form checks of Infini-attention: vectorised memory vs an explicit per-segment loop."""

from __future__ import annotations

import pytest
import torch

from lavinkit.nn.attention import build_core
from lavinkit.nn.attention.contract import make_layout
from lavinkit.nn.attention.infini import elu_feature


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("padded", [False, True])
def test_memory_matches_explicit_loop(update, padded):
    torch.manual_seed(0)
    layout = make_layout(pairs=3, context_lengths=[7, 3] if padded else None)
    core = build_core("infini", 4, 2, 12, options={"update": update})
    with torch.no_grad():
        core.beta.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
    q, k, v = torch.randn(2, 4, layout.length, 12), torch.randn(2, 2, layout.length, 12), torch.randn(2, 2, layout.length, 12)
    valid = torch.ones(2, 1, layout.length, 1, dtype=torch.bool) if not padded else layout.key_mask.reshape(2, 1, -1, 1)
    torch.testing.assert_close(core(q, k, v, layout) * valid, core.reference(q, k, v, layout) * valid, atol=1e-5, rtol=1e-5)


def test_linear_memory_by_hand():
    """One kv head, gate fully on memory: the target reads sum_p sigma(K_p)^T V_p over both pairs."""
    layout = make_layout(pairs=2, batch=1)
    core = build_core("infini", 1, 1, 12)
    with torch.no_grad():
        core.beta.fill_(30.0)  # sigmoid -> 1: memory path only
    q, k, v = torch.randn(1, 1, layout.length, 12), torch.randn(1, 1, layout.length, 12), torch.randn(1, 1, layout.length, 12)
    out = core(q, k, v, layout)
    n = 8  # tokens per pair (2 items x 2x2 tokens)
    sk = elu_feature(k[0, 0])
    mem = sk[: 2 * n].T @ v[0, 0, : 2 * n]
    z = sk[: 2 * n].sum(0)
    sq = elu_feature(q[0, 0, 2 * n :])  # query item + target
    torch.testing.assert_close(out[0, 0, 2 * n :], (sq @ mem) / (sq @ z + 1e-6)[:, None], atol=1e-5, rtol=1e-5)
    other = sk[n : 2 * n].T @ v[0, 0, n : 2 * n]  # pair 0 reads pair 1 only
    sq0 = elu_feature(q[0, 0, :n])
    torch.testing.assert_close(out[0, 0, :n], (sq0 @ other) / (sq0 @ sk[n : 2 * n].sum(0) + 1e-6)[:, None],
                               atol=1e-5, rtol=1e-5)


def test_memory_is_position_free_and_local_path_is_not():
    """RoPE only on the local path: with the gate fully on memory, shifting positions changes nothing."""
    layout = make_layout(pairs=1, batch=1)
    shifted = make_layout(pairs=1, batch=1, context_lengths=None)
    core = build_core("infini", 2, 2, 12)
    q, k, v = torch.randn(1, 2, layout.length, 12), torch.randn(1, 2, layout.length, 12), torch.randn(1, 2, layout.length, 12)
    object.__setattr__(shifted, "cos", torch.ones_like(layout.cos))
    object.__setattr__(shifted, "sin", torch.zeros_like(layout.sin))
    with torch.no_grad():
        core.beta.fill_(30.0)
        torch.testing.assert_close(core(q, k, v, layout), core(q, k, v, shifted))
        core.beta.fill_(-30.0)
        assert not torch.allclose(core(q, k, v, layout), core(q, k, v, shifted))
