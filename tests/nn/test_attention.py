"""Contract test: every registered attention backend agrees with the naive reference."""

from __future__ import annotations

import pytest
import torch

from lavinkit.nn.attention import available_attention, get_attention, naive_attention, register_attention
from lavinkit.nn.attention.registry import _REGISTRY


def _inputs(b=2, h=4, hkv=2, lq=7, lk=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, requires_grad=True)
    k = torch.randn(b, hkv, lk, d, generator=g, requires_grad=True)
    v = torch.randn(b, hkv, lk, d, generator=g, requires_grad=True)
    return q, k, v


def _key_mask(b, lk):
    lengths = torch.tensor([lk, lk - 3])[:b]
    return (torch.arange(lk)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, Lk]


@pytest.mark.parametrize("name", available_attention())
@pytest.mark.parametrize("hkv", [4, 2, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_backend_matches_naive(name, hkv, masked):
    fn = get_attention(name)
    q, k, v = _inputs(hkv=hkv)
    mask = _key_mask(2, k.shape[2]) if masked else None
    out = fn(q, k, v, attn_mask=mask, scale=0.3)
    ref = naive_attention(q, k, v, attn_mask=mask, scale=0.3)
    assert out.shape == q.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", available_attention())
def test_backend_default_scale_and_float_mask(name):
    fn = get_attention(name)
    q, k, v = _inputs(hkv=4)
    bias = torch.randn(1, 1, q.shape[2], k.shape[2])
    torch.testing.assert_close(
        fn(q, k, v, attn_mask=bias), naive_attention(q, k, v, attn_mask=bias, scale=q.shape[-1] ** -0.5),
        atol=1e-5, rtol=1e-5,
    )


def test_gqa_head_mapping_is_repeat_interleave():
    """Query head h reads kv head h // group (flash-attn / official semantics)."""
    q, k, v = _inputs(h=4, hkv=2)
    out = naive_attention(q, k, v)
    for h in range(4):
        one = naive_attention(q[:, h : h + 1], k[:, h // 2 : h // 2 + 1], v[:, h // 2 : h // 2 + 1])
        torch.testing.assert_close(out[:, h : h + 1], one)


def test_mask_excludes_keys():
    q, k, v = _inputs(hkv=4, lk=9)
    mask = _key_mask(2, 9)
    out = naive_attention(q, k, v, attn_mask=mask)
    short = naive_attention(q[1:], k[1:, :, :6], v[1:, :, :6])
    torch.testing.assert_close(out[1:], short)


def test_registry_errors_and_custom_backend():
    with pytest.raises(KeyError, match="registered: .*naive.*sdpa"):
        get_attention("does-not-exist")
    with pytest.raises(TypeError):
        get_attention(3)

    @register_attention("_test_scaled_naive")
    def custom(q, k, v, *, attn_mask=None, scale=None):
        return naive_attention(q, k, v, attn_mask=attn_mask, scale=scale)

    try:
        assert get_attention("_test_scaled_naive") is custom
        with pytest.raises(ValueError, match="already registered"):
            register_attention("_test_scaled_naive")(lambda *a, **k: None)

        class Backend:
            def __call__(self, q, k, v, *, attn_mask=None, scale=None):
                return custom(q, k, v, attn_mask=attn_mask, scale=scale)

        assert isinstance(get_attention(Backend), Backend)
    finally:
        _REGISTRY.pop("_test_scaled_naive")


def test_bad_head_counts():
    q, k, v = _inputs(h=4, hkv=3)
    for name in available_attention():
        with pytest.raises(ValueError, match="multiple of key/value heads"):
            get_attention(name)(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("name", available_attention())
@pytest.mark.parametrize("masked", [False, True])
def test_backend_matches_naive_on_cuda(name, masked):
    q, k, v = (a.detach().cuda().half() for a in _inputs(hkv=2, d=16))
    mask = _key_mask(2, k.shape[2]).cuda() if masked else None
    out = get_attention(name)(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out.float(), naive_attention(q, k, v, attn_mask=mask).float(), atol=2e-3, rtol=2e-3)
