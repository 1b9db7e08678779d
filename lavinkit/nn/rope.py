"""Multi-axis rotary position embedding (RoPE) from integer position ids: pure functions.

The head dimension is cut into contiguous parts, one per axis (LaVin-DiT: three equal parts for
(t, h, w)). Part ``i`` of size ``d_i`` rotates with the position along axis ``i`` using frequencies
``theta ** (-2k / d_i)``, ``k = 0 .. d_i/2 - 1`` (exponent over the part size), rotate-half style
(GPT-NeoX): channel ``k`` of a part pairs with channel ``k + d_i/2``.

Typical use::

    cos, sin = rope_cos_sin(positions, axes_dims)        # positions [..., L, n_axes] int
    q = apply_rope(q, cos, sin, axes_dims)               # q [B, H, L, D], cos/sin broadcast to it
"""

from __future__ import annotations

import functools

import torch


def equal_axes_dims(head_dim: int, n_axes: int = 3) -> tuple[int, ...]:
    """Equal even parts of ``head_dim`` (the official split). Raises ValueError when impossible."""
    if head_dim % (2 * n_axes):
        raise ValueError(
            f"head_dim {head_dim} cannot be split into {n_axes} equal even RoPE parts "
            f"(needs head_dim % {2 * n_axes} == 0); pass explicit rope_axes_dims, e.g. "
            f"{_suggest_axes_dims(head_dim, n_axes)}"
        )
    return (head_dim // n_axes,) * n_axes


def _suggest_axes_dims(head_dim: int, n_axes: int) -> tuple[int, ...]:
    """An even split favouring the spatial axes, e.g. 64 -> (16, 24, 24), 128 -> (32, 48, 48)."""
    if n_axes == 3:
        spatial = (head_dim * 3 // 8) // 2 * 2
        return (head_dim - 2 * spatial, spatial, spatial)
    base = (head_dim // n_axes) // 2 * 2
    return (head_dim - base * (n_axes - 1),) + (base,) * (n_axes - 1)


def rope_inv_freq(dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """Inverse frequencies ``theta ** (-2k/dim)`` for ``k < dim/2``: float32 ``[dim // 2]``."""
    if dim % 2:
        raise ValueError(f"RoPE part size must be even, got {dim}")
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def rope_cos_sin(
    positions: torch.Tensor,
    axes_dims: tuple[int, ...],
    theta: float = 10000.0,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation tables for integer positions.

    Args:
        positions: ``[..., n_axes]`` integer positions (one column per axis).
        axes_dims: channels per axis; ``sum(axes_dims)`` is the head dimension.
        theta: RoPE base.
        dtype: dtype of the returned tables (angles are always computed in float32).

    Returns:
        ``(cos, sin)``, each ``[..., sum(axes_dims)]``. ``sin`` carries the rotate-half sign
        (``-sin`` on the first half of every part) so that ``apply_rope`` is one multiply-add.
    """
    if positions.shape[-1] != len(axes_dims):
        raise ValueError(f"positions have {positions.shape[-1]} axes but axes_dims {axes_dims} has {len(axes_dims)}")
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axes_dims):
        angle = positions[..., axis].float().unsqueeze(-1) * rope_inv_freq(dim, theta, positions.device)  # [..., d/2]
        cos, sin = angle.cos(), angle.sin()
        cos_parts += [cos, cos]
        sin_parts += [-sin, sin]
    cos, sin = torch.cat(cos_parts, dim=-1), torch.cat(sin_parts, dim=-1)
    if dtype is not None:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos, sin


@functools.lru_cache(maxsize=64)
def _half_swap_index(axes_dims: tuple[int, ...], device: torch.device) -> torch.Tensor:
    index, start = [], 0
    for dim in axes_dims:
        half = dim // 2
        index += list(range(start + half, start + dim)) + list(range(start, start + half))
        start += dim
    return torch.tensor(index, dtype=torch.long, device=device)


def swap_halves(x: torch.Tensor, axes_dims: tuple[int, ...]) -> torch.Tensor:
    """Per RoPE part ``[x1, x2] -> [x2, x1]`` along the last dimension."""
    n = len(axes_dims)
    if all(d == axes_dims[0] for d in axes_dims):
        half = axes_dims[0] // 2
        # [..., D] -> [..., parts, 2, half], swap the two halves of every part
        return x.unflatten(-1, (n, 2, half)).flip(-2).flatten(-3)
    return x.index_select(-1, _half_swap_index(tuple(axes_dims), x.device))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, axes_dims: tuple[int, ...]) -> torch.Tensor:
    """Rotate ``x`` (``[..., L, D]``) with tables from :func:`rope_cos_sin` broadcastable to it.

    Per part, with ``x1, x2`` its halves: ``[x1 cos - x2 sin, x2 cos + x1 sin]``.
    """
    return x * cos + swap_halves(x, axes_dims) * sin


def grid_positions(t: int, h: int, w: int, t_offset: int = 0, device=None) -> torch.Tensor:
    """Integer (t, h, w) ids of a ``t x h x w`` token grid in t-major, then row, then column order: ``[t*h*w, 3]``."""
    tt, hh, ww = torch.meshgrid(
        torch.arange(t_offset, t_offset + t, device=device),
        torch.arange(h, device=device),
        torch.arange(w, device=device),
        indexing="ij",
    )
    return torch.stack([tt, hh, ww], dim=-1).reshape(-1, 3)
