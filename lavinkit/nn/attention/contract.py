"""Contract checks for attention cores and token mixers (used by the tests and by the notebook).

* :func:`check_core`: on small random layouts (example pairs of images, pairs of clips, padded rows, the last
  block's target-only queries, with and without GQA): output shape, finite values, determinism, equality with the
  core's :meth:`~lavinkit.nn.attention.plugins.AttentionCore.reference` (forward, and gradients where the core
  trains on this device), and with ``naive`` full attention for cores that declare ``exact``.
* :func:`check_in_jdit`: a tiny J-DiT with the variant trains a step: finite, deterministic output, a gradient on
  every trainable parameter, ``state_dict`` round trip.

Each returns a short report dict and raises ``AssertionError`` on a broken contract; variants that declared they
cannot run here raise :class:`Unsupported` with the declared reason (tests turn it into a skip).
"""

from __future__ import annotations

from typing import Any

import torch

from lavinkit.nn.attention.backends import naive_attention
from lavinkit.nn.attention.layout import JointLayout, build_layout
from lavinkit.nn.attention.plugins import AttentionCore, build_core, get_core, get_mixer
from lavinkit.nn.rope import grid_positions, rope_cos_sin


class Unsupported(Exception):
    """The variant declared that it cannot run this check here (message = its declared reason)."""


AXES = (4, 4, 4)  # head_dim 12 split over (t, h, w)


def make_layout(pairs: int = 2, item_frames: int = 1, height: int = 2, width: int = 2, batch: int = 2,
                context_lengths: list[int] | None = None, query_start: int = 0, axes_dims=AXES, device=None) -> JointLayout:
    """A layout of ``pairs`` example pairs + query (each ``item_frames`` frames) + a target of ``item_frames`` frames.

    ``context_lengths`` (frames per row) pads rows, as batched CFG does; ``query_start`` = ``"target"`` style
    target-only queries are given as a token index.
    """
    tc, tx = (2 * pairs + 1) * item_frames, item_frames
    positions = grid_positions(tc + tx, height, width, device=device)  # [L, 3]
    lengths = key_mask = None
    if context_lengths is not None:
        from lavinkit.models.jdit.sequence import joint_positions, key_padding_mask

        lengths = torch.tensor(context_lengths, device=device)
        positions = joint_positions(tc, tx, height, width, lengths, device=device)  # [B, L, 3]
        key_mask = key_padding_mask(lengths, tc, tx, height * width)
    cos, sin = rope_cos_sin(positions, axes_dims)
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    layout = build_layout(tc, tx, height, width, cos.unsqueeze(1), sin.unsqueeze(1), axes_dims, sum(axes_dims) ** -0.5,
                          key_mask=key_mask, context_lengths=lengths)
    return layout.for_queries(query_start)


def _qkv(layout: JointLayout, heads: int, kv_heads: int, batch: int, seed: int, grad: bool, device=None):
    g = torch.Generator().manual_seed(seed)
    d = sum(layout.axes_dims)
    q = torch.randn(batch, heads, layout.query_length, d, generator=g).to(device)
    k = torch.randn(batch, kv_heads, layout.length, d, generator=g).to(device)
    v = torch.randn(batch, kv_heads, layout.length, d, generator=g).to(device)
    return [x.requires_grad_(grad) for x in (q, k, v)]


def _valid_queries(layout: JointLayout, batch: int) -> torch.Tensor:
    """``[B, 1, Lq, 1]`` True for query tokens that are not padding."""
    if layout.key_mask is None:
        return torch.ones(batch, 1, layout.query_length, 1, dtype=torch.bool)
    return layout.key_mask.reshape(batch, 1, -1, 1)[:, :, layout.query_start :].cpu()


def _full_reference(q, k, v, layout):
    qr, kr = layout.rotate(q, k)
    return naive_attention(qr, kr, v, attn_mask=layout.key_mask, scale=layout.scale)


def check_core(spec: str | type, options: dict[str, Any] | None = None, heads: int = 4, device=None,
               atol: float = 1e-5) -> dict[str, Any]:
    """Check an attention core against its reference on small layouts (see the module docstring)."""
    cls = get_core(spec)
    caps = cls.capabilities
    device = torch.device(device or "cpu")
    can_train = caps.trains_on_cpu or device.type == "cuda"
    kv_options = [heads, heads // 2] if caps.supports_gqa else [heads]
    layouts = {
        "image pairs": dict(pairs=2),
        "clip pair": dict(pairs=1, item_frames=2),
        "no pairs": dict(pairs=0),
        "last block": dict(pairs=2, query_start=20),
    }
    if caps.supports_key_mask:
        layouts["padded rows"] = dict(pairs=2, context_lengths=[5, 2])
        layouts["padded, last block"] = dict(pairs=2, context_lengths=[5, 3], query_start=20)
    report: dict[str, Any] = {"core": cls.name, "checked": [], "trains": can_train}
    for lname, kw in layouts.items():
        layout = make_layout(device=device, **kw)
        for kv_heads in kv_options:
            core: AttentionCore = build_core(cls, heads, kv_heads, sum(AXES), options=options).to(device)
            with torch.no_grad():
                for p in core.parameters():  # move learned parameters off their initial values
                    p.add_(0.3 * torch.randn_like(p))
            q, k, v = _qkv(layout, heads, kv_heads, 2, seed=len(report["checked"]), grad=can_train, device=device)
            valid = _valid_queries(layout, 2).to(device)
            with torch.set_grad_enabled(can_train):
                out = core(q, k, v, layout)
                again = core(q, k, v, layout)
                ref = core.reference(q, k, v, layout)
            where = f"core {cls.name!r}, layout {lname!r}, kv heads {kv_heads}"
            assert out.shape == q.shape, f"{where}: output {tuple(out.shape)} != {tuple(q.shape)}"
            assert torch.isfinite(out).all(), f"{where}: non-finite output"
            assert torch.equal(out, again), f"{where}: not deterministic"
            torch.testing.assert_close(out * valid, ref * valid, atol=atol, rtol=atol, msg=lambda m: f"{where}: vs reference: {m}")
            if caps.exact:
                full = _full_reference(q, k, v, layout)
                torch.testing.assert_close(out * valid, full * valid, atol=atol, rtol=atol,
                                           msg=lambda m: f"{where}: vs naive: {m}")
            if can_train:
                params = [p for p in core.parameters() if p.requires_grad]
                inputs = [q, k, v, *params]
                grads = torch.autograd.grad((out * valid).square().sum(), inputs)
                ref_grads = torch.autograd.grad((ref * valid).square().sum(), inputs)
                for name, a, b in zip(["q", "k", "v", *[f"param{i}" for i in range(len(params))]], grads, ref_grads):
                    torch.testing.assert_close(a, b, atol=10 * atol, rtol=10 * atol,
                                               msg=lambda m, n=name: f"{where}: gradient of {n}: {m}")
            report["checked"].append(f"{lname} / kv {kv_heads}")
    return report


def _tiny_config(**overrides):
    from lavinkit.models.jdit import JDiTConfig

    return JDiTConfig.from_name("tiny", hidden_size=48, num_heads=4, kv_group=2, rope_axes_dims=AXES, **overrides)


def check_in_jdit(kind: str, spec: str | type, options: dict[str, Any] | None = None, steps: int = 1,
                  seed: int = 0) -> dict[str, Any]:
    """Train a tiny J-DiT with the core (``kind="core"``) or mixer (``kind="mixer"``) for ``steps`` steps on CPU.

    Checks: finite, deterministic outputs; a gradient on every trainable parameter; strict ``state_dict`` round
    trip to a freshly built model with identical outputs. Raises :class:`Unsupported` for variants that declared
    they cannot train on CPU.
    """
    from lavinkit.models.jdit import JDiT

    cls = get_core(spec) if kind == "core" else get_mixer(spec)
    if not cls.capabilities.trains_on_cpu:
        raise Unsupported(f"{cls.name}: {cls.capabilities.cpu_reason}")
    field = "attention_core" if kind == "core" else "token_mixer"
    config = _tiny_config(**{field: spec, f"{field}_options": dict(options or {})})
    torch.manual_seed(seed)
    model = JDiT(config)
    with torch.no_grad():  # leave the zero-initialised identity start so every path carries gradient
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed)
    x, context, t = torch.randn(2, 16, 1, 4, 4, generator=g), torch.randn(2, 16, 5, 4, 4, generator=g), torch.rand(2, generator=g)
    lengths = torch.tensor([5, 3]) if cls.capabilities.supports_key_mask else None
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x, t, context, context_lengths=lengths)
        assert torch.isfinite(out).all(), f"{cls.name}: non-finite J-DiT output"
        out.square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
        assert not missing, f"{cls.name}: parameters without a finite gradient: {missing}"
        opt.step()
    model.eval()
    with torch.no_grad():
        a = model(x, t, context, context_lengths=lengths)
        b = model(x, t, context, context_lengths=lengths)
        assert torch.equal(a, b), f"{cls.name}: J-DiT output is not deterministic"
        clone = JDiT(config)
        clone.load_state_dict(model.state_dict(), strict=True)
        clone.eval()
        torch.testing.assert_close(clone(x, t, context, context_lengths=lengths), a, atol=0, rtol=0)
    extra = [n for n, _ in model.named_parameters() if ".core." in n or ".mixer." in n]
    return {"variant": cls.name, "steps": steps, "own_parameters": len(extra), "output_std": float(a.std())}
