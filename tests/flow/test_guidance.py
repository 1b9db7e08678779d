import pytest
import torch

from lavinkit.flow import ClassifierFreeGuidance, EulerSampler, build_cfg_batch, guided_velocity, null_context
from lavinkit.flow.guidance import padding_fraction, resolve_mode


class ToyContextModel:
    """Honours the J-DiT context_lengths contract: only valid frames count, and the answer depends on the
    valid length (like the target's temporal RoPE index), so mishandled padding changes the output."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, context, context_lengths=None):
        self.calls += 1
        b, _, frames = context.shape[:3]
        lengths = torch.full((b,), frames) if context_lengths is None else context_lengths
        valid = (torch.arange(frames)[None] < lengths[:, None]).to(x.dtype)  # [B, Tc]
        w = (0.5 + 0.25 * torch.arange(frames))[None] * valid  # position-dependent weights
        summary = (context * w[:, None, :, None, None]).sum(2, keepdim=True) / valid.sum(1).view(-1, 1, 1, 1, 1)
        return torch.tanh(x * summary) + t.view(-1, 1, 1, 1, 1) * lengths.view(-1, 1, 1, 1, 1).to(x.dtype) * 0.1


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 1, 3, 3, generator=g), torch.rand(2, generator=g), torch.randn(2, 4, 5, 3, 3, generator=g)


def test_null_context_is_zeros_then_query(data):
    _, _, ctx = data
    null = null_context(ctx)
    assert null.shape == (2, 4, 2, 3, 3)
    assert torch.equal(null[:, :, 0], torch.zeros_like(null[:, :, 0])) and torch.equal(null[:, :, 1], ctx[:, :, -1])
    # per-row query position with context_lengths; video queries with several frames
    null = null_context(ctx, query_frames=2, context_lengths=torch.tensor([5, 3]))
    assert torch.equal(null[0, :, 1:], ctx[0, :, 3:5]) and torch.equal(null[1, :, 1:], ctx[1, :, 1:3])


def test_build_cfg_batch_layout(data):
    x, t, ctx = data
    x2, t2, ctx2, len2 = build_cfg_batch(x, t, ctx)
    assert x2.shape[0] == t2.shape[0] == ctx2.shape[0] == 4 and ctx2.shape[2] == 5
    assert len2.tolist() == [5, 5, 2, 2]
    assert torch.equal(ctx2[:2], ctx) and torch.equal(ctx2[2:, :, :2], null_context(ctx))
    assert torch.equal(ctx2[2:, :, 2:], torch.zeros_like(ctx2[2:, :, 2:]))
    # a query-only context (k = 0) is padded up to the 2-frame null context
    _, _, ctx2, len2 = build_cfg_batch(x, t, ctx[:, :, -1:])
    assert ctx2.shape[2] == 2 and len2.tolist() == [1, 1, 2, 2]


@pytest.mark.parametrize("lengths", [None, torch.tensor([5, 3])])
def test_batched_equals_two_pass(data, lengths):
    x, t, ctx = data
    model = ToyContextModel()
    kw = dict(scale=1.5, context_lengths=lengths)
    batched = guided_velocity(model, x, t, ctx, mode="batched", **kw)
    two = guided_velocity(model, x, t, ctx, mode="two_pass", **kw)
    assert model.calls == 3
    torch.testing.assert_close(batched, two, atol=1e-6, rtol=1e-6)
    for max_padding in (0.0, 1.0):  # auto as two passes, then as one batched pass
        model.calls = 0
        auto = guided_velocity(model, x, t, ctx, mode="auto", max_padding=max_padding, **kw)
        assert model.calls == (2 if max_padding == 0.0 else 1)
        torch.testing.assert_close(auto, two, atol=1e-6, rtol=1e-6)


def test_padding_fraction_counts_the_padded_null_frames():
    # 1 pair + image query: batched computes 2 x (3 + 1) frames, two passes (3 + 1) + (2 + 1)
    assert padding_fraction(3) == pytest.approx(1 / 8)
    assert padding_fraction(9) == pytest.approx(1 - 13 / 20)  # 4 pairs
    assert padding_fraction(17) == pytest.approx(1 - 21 / 36)  # 8 pairs
    assert padding_fraction(2) == 0.0  # the context is as long as the null context
    assert padding_fraction(1) == pytest.approx(1 / 6)  # a query-only context is padded up to the null context
    # video: 1 pair of 5-frame latents + a 5-frame query; 5 answer frames; null = zeros frame + query
    assert padding_fraction(15, target_frames=5, query_frames=5) == pytest.approx(1 - (15 + 6 + 10) / 40)
    # more pairs waste more: the fraction grows with the context
    assert padding_fraction(3) < padding_fraction(5) < padding_fraction(9) < padding_fraction(17)


def test_auto_batches_only_below_the_padding_limit():
    assert resolve_mode("auto", 3) == "two_pass" and resolve_mode("auto", 9) == "two_pass"
    assert resolve_mode("auto", 2) == "batched"  # nothing padded: one call for the same tokens
    assert resolve_mode("auto", 3, max_padding=0.125) == "batched"
    assert resolve_mode("auto", 5, max_padding=0.125) == "two_pass"
    assert resolve_mode("batched", 17) == "batched" and resolve_mode("two_pass", 2) == "two_pass"
    with pytest.raises(ValueError, match="guidance mode"):
        resolve_mode("fastest", 3)


def test_auto_is_the_default_everywhere():
    import inspect

    from lavinkit.commands.infer import build_parser
    from lavinkit.lit.jdit_module import JDiTModule
    from lavinkit.pipeline import InContextPipeline

    assert ClassifierFreeGuidance().mode == "auto"
    assert inspect.signature(guided_velocity).parameters["mode"].default == "auto"
    assert inspect.signature(InContextPipeline).parameters["guidance_mode"].default == "auto"
    assert JDiTModule("tiny").guidance.mode == "auto"  # validation sampling
    assert build_parser().get_defaults().guidance_mode == "auto"  # lavinkit infer (and eval, through the pipeline)


def test_formula_and_scale_one_is_conditional(data):
    x, t, ctx = data
    model = ToyContextModel()
    c, u = model(x, t, ctx), model(x, t, null_context(ctx))
    torch.testing.assert_close(guided_velocity(model, x, t, ctx, scale=2.0), u + 2.0 * (c - u))
    torch.testing.assert_close(guided_velocity(model, x, t, ctx, scale=0.0), u)
    model.calls = 0
    assert torch.equal(guided_velocity(model, x, t, ctx, scale=1.0), c) and model.calls == 1
    assert not torch.allclose(c, u)  # the null context really changes the toy's answer


def test_sampling_with_guidance_counts_forwards(data):
    x, _, ctx = data
    # auto: two passes for the 5-frame context (2 pairs), one batched pass for a 2-frame context (no padding)
    cases = (("batched", ctx, 1), ("two_pass", ctx, 2), ("auto", ctx, 2), ("auto", ctx[:, :, -2:], 1))
    for mode, context, per_eval in cases:
        model = ToyContextModel()
        cfg = ClassifierFreeGuidance(1.5, mode)
        out = EulerSampler(20, "official")(cfg.velocity_fn(model, context), x)
        assert out.nfe == 19 and model.calls == 19 * per_eval == 19 * cfg.forwards_per_eval(context.shape[2])
    with pytest.raises(ValueError, match="guidance mode"):
        ClassifierFreeGuidance(1.5, "triple")
    with pytest.raises(ValueError, match="context_frames"):
        ClassifierFreeGuidance(1.5, "auto").forwards_per_eval()
    with pytest.raises(ValueError, match="max_padding"):
        ClassifierFreeGuidance(1.5, "auto", max_padding=1.5)


def test_context_lengths_validation(data):
    x, t, ctx = data
    with pytest.raises(ValueError, match="context_lengths"):
        null_context(ctx, context_lengths=torch.tensor([6, 2]))
