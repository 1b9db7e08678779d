"""The official sampler vector reproduced with the J-DiT imported from the official tiny weights."""

import json

import pytest
import torch

from lavinkit.flow import ClassifierFreeGuidance, EulerSampler
from tests.conftest import PARITY, load_parity

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def dit():
    from lavinkit.interop.jdit_official import jdit_from_official

    kwargs = json.loads((PARITY / "manifest.json").read_text())["files"]["jdit_weights.safetensors"]["constructor_kwargs"]
    return jdit_from_official(load_parity("jdit_weights"), **kwargs).eval()


@pytest.mark.parametrize("mode", ["batched", "two_pass", "auto"])
def test_sampler_vector(dit, mode):
    ref = load_parity("sampler")
    cfg = ClassifierFreeGuidance(scale=1.5, mode=mode)
    calls, velocities = [], []

    def model(x, t, context, context_lengths=None):
        calls.append(t.clone())
        return dit(x, t, context, context_lengths)

    out = EulerSampler(num_steps=20, grid="official")(
        cfg.velocity_fn(model, ref["cond"]), ref["x_init"], return_trajectory=True,
        callback=lambda k, t, x, v: velocities.append(v),
    )
    assert out.nfe == 19 and len(calls) == 19 * cfg.forwards_per_eval(ref["cond"].shape[2])
    assert torch.equal(out.times[:-1], ref["model_t"])
    torch.testing.assert_close(torch.stack(velocities), ref["velocities"], **TOL)
    torch.testing.assert_close(out.trajectory, ref["trajectory"], **TOL)
    torch.testing.assert_close(out.sample, ref["sample"], **TOL)
