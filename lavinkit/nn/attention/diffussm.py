"""``diffussm``: a DiffuSSM-style token mixer (Yan, Gu, Rush, "Diffusion Models Without Attention", CVPR 2024,
arXiv 2311.18257) for the dual-stream J-DiT.

DiffuSSM replaces attention by a gated bidirectional state-space layer with hourglass dense layers: dense work
runs on a sequence shortened ``M`` times (``M`` neighbouring tokens folded into one wider vector), the SSM on the
full length. For one stream, with ``I`` the folded input (``[B, L/M, M D]``) and ``act`` = GELU:

    U  = unfold(act(W_up act(W_0 I)))          [B, L, Du]      (expand back to length L)
    Y  = BiSSM(U)                              [B, L, 2 Du]    (forward + reversed S4D, BiGS-style)
    I' = act(W_down fold(Y))                   [B, L/M, Dh]
    O  = unfold(W_3 (act(W_2 I') * act(W_1 I)))  [B, L, D]     (multiplicative gate with the block input)

Joint version (the SSM analogue of joint attention, docs/reference/perf-and-variants.md s.7.2): every dense
weight is per stream (context / target), and ONE shared bidirectional S4D runs over the concatenated sequence
``[U_ctx; U_tgt]`` (frame-major, raster within frames), so the forward scan carries the context into the
target and the reverse scan the target back into the context. Padded context tokens are zeroed before the SSM.
Conditioning stays in the block (adaLN scale and tanh gate around the sub-layer). Cost is linear in ``L``
(``O(L log L)`` for the FFT convolution); pure PyTorch, trains on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lavinkit.nn.attention.layout import JointLayout
from lavinkit.nn.attention.plugins import Capabilities, TokenMixer, register_mixer
from lavinkit.nn.ssm import BidirectionalS4D


def fold(x: torch.Tensor, m: int) -> torch.Tensor:
    """``[B, L, C]`` -> ``[B, ceil(L/m), m*C]`` (zero-padding the tail to a multiple of ``m``)."""
    pad = (-x.shape[1]) % m
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(x.shape[0], x.shape[1] // m, m * x.shape[2])


def unfold(x: torch.Tensor, m: int, length: int) -> torch.Tensor:
    """Inverse of :func:`fold`: ``[B, J, m*C]`` -> ``[B, length, C]``."""
    return x.reshape(x.shape[0], x.shape[1] * m, x.shape[2] // m)[:, :length]


class HourglassStream(nn.Module):
    """The per-stream dense weights of one DiffuSSM layer (``W_0, W_up, W_down, W_1, W_2, W_3``)."""

    def __init__(self, dim: int, hidden: int, ssm_dim: int, m: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.w0 = nn.Linear(m * dim, hidden, **kw)
        self.w_up = nn.Linear(hidden, m * ssm_dim, **kw)
        self.w_down = nn.Linear(m * 2 * ssm_dim, hidden, **kw)
        self.w1 = nn.Linear(m * dim, hidden, **kw)
        self.w2 = nn.Linear(hidden, hidden, **kw)
        self.w3 = nn.Linear(hidden, m * dim, **kw)

    def expand(self, folded: torch.Tensor, m: int, length: int) -> torch.Tensor:
        """``I [B, J, mD]`` -> ``U [B, L, Du]``."""
        return unfold(F.gelu(self.w_up(F.gelu(self.w0(folded)))), m, length)

    def contract(self, folded: torch.Tensor, y: torch.Tensor, m: int, length: int) -> torch.Tensor:
        """``I [B, J, mD]``, ``Y [B, L, 2Du]`` -> ``O [B, L, D]``."""
        inner = F.gelu(self.w_down(fold(y, m)))  # [B, J, Dh]
        return unfold(self.w3(F.gelu(self.w2(inner)) * F.gelu(self.w1(folded))), m, length)


@register_mixer("diffussm")
class DiffuSSMMixer(TokenMixer):
    """Dual-stream hourglass dense layers around one shared bidirectional S4D (module docstring).

    Args:
        hourglass: token folding factor ``M`` (the paper uses 2).
        hidden: width ``Dh`` of the folded dense layers (default ``hidden_size``).
        ssm_dim: channels ``Du`` of the SSM (default ``hidden_size // 2``).
        d_state: S4D state size per channel.
    """

    capabilities = Capabilities()

    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, last=False, device=None, dtype=None,
                 hourglass: int = 2, hidden: int | None = None, ssm_dim: int | None = None, d_state: int = 16):
        super().__init__(hidden_size, num_heads, num_kv_heads, head_dim, last=last)
        if hourglass < 1:
            raise ValueError(f"diffussm: hourglass must be >= 1, got {hourglass}")
        self.m = int(hourglass)
        hidden = hidden or hidden_size
        ssm_dim = ssm_dim or max(hidden_size // 2, 1)
        self.context = HourglassStream(hidden_size, hidden, ssm_dim, self.m, device=device, dtype=dtype)
        self.target = HourglassStream(hidden_size, hidden, ssm_dim, self.m, device=device, dtype=dtype)
        self.ssm = BidirectionalS4D(ssm_dim, d_state, device=device)

    def extra_repr(self) -> str:
        return f"hourglass={self.m}"

    def reset_parameters(self) -> None:
        self.ssm.reset_parameters()

    def dead_parameters(self) -> list[nn.Parameter]:
        if not self.last:
            return []
        ctx = self.context
        return [p for layer in (ctx.w_down, ctx.w1, ctx.w2, ctx.w3) for p in layer.parameters()]

    def mix(self, a_ctx: torch.Tensor, a_tgt: torch.Tensor, c_ctx, c_tgt, layout: JointLayout):
        """a_ctx ``[B, Lc, D]``, a_tgt ``[B, Lx, D]`` -> ``(o_ctx [B, Lc, D] | None, o_tgt [B, Lx, D])``."""
        lc, lx, m = a_ctx.shape[1], a_tgt.shape[1], self.m
        i_ctx, i_tgt = fold(a_ctx, m), fold(a_tgt, m)
        u = torch.cat([self.context.expand(i_ctx, m, lc), self.target.expand(i_tgt, m, lx)], dim=1)  # [B, L, Du]
        if layout.key_mask is not None:
            u = u * layout.key_mask.reshape(u.shape[0], -1, 1).to(u.dtype)  # padded context tokens carry nothing
        y = self.ssm(u).to(a_tgt.dtype)  # [B, L, 2Du]
        o_tgt = self.target.contract(i_tgt, y[:, lc:], m, lx)
        if self.last:
            return None, o_tgt
        return self.context.contract(i_ctx, y[:, :lc], m, lc), o_tgt
