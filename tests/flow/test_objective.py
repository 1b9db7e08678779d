import pytest
import torch

from lavinkit.flow import FlowMatchingObjective, LogitNormalTimeSampler, velocity_loss
from tests.conftest import load_parity

TOL = dict(atol=1e-6, rtol=1e-6)


def test_transport_train_parity():
    ref = load_parity("transport_train")
    obj = FlowMatchingObjective(time_sampler=LogitNormalTimeSampler(seed=42))
    fs = obj.prepare(ref["x1"], x0=ref["x0"])
    torch.testing.assert_close(fs.t, ref["t"], **TOL)
    torch.testing.assert_close(fs.xt, ref["xt"], **TOL)
    torch.testing.assert_close(fs.target, ref["ut"], **TOL)
    terms = obj.loss(ref["model_out"], fs.target)
    torch.testing.assert_close(terms["per_sample"], ref["per_sample_loss"], **TOL)
    torch.testing.assert_close(terms["loss"].reshape(1), ref["loss"], **TOL)


def test_call_runs_model_on_interpolant():
    ref = load_parity("transport_train")
    obj = FlowMatchingObjective(time_sampler=LogitNormalTimeSampler(seed=42))
    seen = {}

    def model(x, t):
        seen["x"], seen["t"] = x, t
        return ref["model_out"]

    terms = obj(model, ref["x1"], x0=ref["x0"])
    torch.testing.assert_close(seen["x"], ref["xt"], **TOL)
    torch.testing.assert_close(terms["loss"].reshape(1), ref["loss"], **TOL)
    assert set(terms) == {"loss", "mse", "l1", "per_sample", "t"}


def test_weights_and_terms():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 2, generator=g), torch.randn(4, 3, 2, generator=g)
    d = pred - target
    terms = velocity_loss(pred, target, mse_weight=2.0, l1_weight=0.5)
    torch.testing.assert_close(terms["mse"], d.square().mean())
    torch.testing.assert_close(terms["l1"], d.abs().mean())
    torch.testing.assert_close(terms["loss"], 2.0 * d.square().mean() + 0.5 * d.abs().mean())
    assert velocity_loss(target, target)["loss"] == 0


def test_perfect_velocity_gives_zero_loss_and_gradients_flow():
    x1 = torch.randn(2, 4, 1, 4, 4)
    obj = FlowMatchingObjective()
    fs = obj.prepare(x1, generator=torch.Generator().manual_seed(0), noise_generator=torch.Generator().manual_seed(1))
    assert obj.loss(fs.target, fs.target)["loss"] == 0
    w = torch.zeros(1, requires_grad=True)
    obj(lambda x, t: x * w, x1)["loss"].backward()
    assert w.grad is not None and w.grad.abs() > 0


def test_seeded_noise_is_reproducible():
    x1 = torch.randn(2, 4, 1, 4, 4)
    obj = FlowMatchingObjective(time_sampler=LogitNormalTimeSampler())
    a = obj.prepare(x1, generator=torch.Generator().manual_seed(0), noise_generator=torch.Generator().manual_seed(1))
    b = obj.prepare(x1, generator=torch.Generator().manual_seed(0), noise_generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x0, b.x0) and torch.equal(a.t, b.t)


def test_errors():
    with pytest.raises(ValueError, match="weights"):
        FlowMatchingObjective(mse_weight=0.0, l1_weight=0.0)
    with pytest.raises(ValueError, match="shape"):
        velocity_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x0 shape"):
        FlowMatchingObjective().prepare(torch.zeros(2, 3), x0=torch.zeros(2, 4))
