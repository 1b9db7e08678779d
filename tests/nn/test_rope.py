"""3-D RoPE: pure-function properties and the official formula."""

from __future__ import annotations

import pytest
import torch

from lavinkit.nn.rope import apply_rope, equal_axes_dims, grid_positions, rope_cos_sin, rope_inv_freq


def _official_rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Official-arch s.2.6 written out: three equal parts, rotate-half per part, 10000^(-2k/d)."""
    d = x.shape[-1] // 3
    out = []
    for axis in range(3):
        part = x[..., axis * d : (axis + 1) * d]
        inv = torch.tensor([10000.0 ** (-2 * k / d) for k in range(d // 2)])
        ang = pos[:, axis, None].double() * inv.double()
        cos, sin = ang.cos().float(), ang.sin().float()
        x1, x2 = part[..., : d // 2], part[..., d // 2 :]
        out.append(torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1))
    return torch.cat(out, dim=-1)


def test_matches_official_formula():
    pos = grid_positions(3, 2, 4, t_offset=1)  # [24, 3]
    x = torch.randn(2, 5, pos.shape[0], 18)
    cos, sin = rope_cos_sin(pos, (6, 6, 6))
    torch.testing.assert_close(apply_rope(x, cos, sin, (6, 6, 6)), _official_rope(x, pos), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("axes", [(6, 6, 6), (4, 8, 12)])
def test_relative_position_invariance(axes):
    """q.k after rotation depends only on the position difference (per axis)."""
    g = torch.Generator().manual_seed(0)
    d = sum(axes)
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)
    p_q, p_k = torch.tensor([[3, 1, 7]]), torch.tensor([[0, 5, 2]])
    shift = torch.tensor([[4, -2, 9]])

    def dot(pq, pk):
        cq, sq = rope_cos_sin(pq, axes)
        ck, sk = rope_cos_sin(pk, axes)
        return (apply_rope(q[None], cq, sq, axes) * apply_rope(k[None], ck, sk, axes)).sum()

    torch.testing.assert_close(dot(p_q, p_k), dot(p_q + shift, p_k + shift), atol=1e-4, rtol=1e-5)
    assert (dot(p_q, p_k) - dot(p_q + shift, p_k)).abs() > 1e-3


def test_norm_preserving_and_identity_at_zero():
    axes = (4, 8, 12)
    x = torch.randn(10, 24)
    pos = torch.randint(0, 50, (10, 3))
    cos, sin = rope_cos_sin(pos, axes)
    torch.testing.assert_close(apply_rope(x, cos, sin, axes).norm(dim=-1), x.norm(dim=-1))
    cos0, sin0 = rope_cos_sin(torch.zeros(10, 3, dtype=torch.long), axes)
    torch.testing.assert_close(apply_rope(x, cos0, sin0, axes), x)


def test_frequencies_and_grid():
    torch.testing.assert_close(rope_inv_freq(6), torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)]))
    pos = grid_positions(2, 2, 3, t_offset=5)
    assert pos.shape == (12, 3)
    assert pos[0].tolist() == [5, 0, 0] and pos[4].tolist() == [5, 1, 1] and pos[-1].tolist() == [6, 1, 2]


def test_bad_split():
    with pytest.raises(ValueError, match=r"rope_axes_dims, e.g. \(16, 24, 24\)"):
        equal_axes_dims(64)
    with pytest.raises(ValueError, match="even"):
        rope_inv_freq(5)
    with pytest.raises(ValueError, match="axes"):
        rope_cos_sin(torch.zeros(3, 2, dtype=torch.long), (6, 6, 6))
