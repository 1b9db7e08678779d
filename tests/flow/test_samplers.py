import math

import pytest
import torch

from lavinkit.flow import EulerSampler, HeunSampler, get_sampler, shifted_grid, uniform_grid
from tests.conftest import load_parity

MU, S = 2.0, 0.5  # x1 ~ N(MU, S^2), x0 ~ N(0, 1), independent coupling


def gauss_velocity(x, t):
    """Exact marginal velocity of the linear path between N(0,1) and N(MU, S^2)."""
    tb = t.double().view(-1, *([1] * (x.ndim - 1)))
    var = tb**2 * S**2 + (1 - tb) ** 2
    return (MU + (tb * S**2 - (1 - tb)) / var * (x.double() - tb * MU)).to(x.dtype)


def analytic_target(x0):
    return MU + S * x0  # the ODE flow map at t = 1


@pytest.fixture
def x0():
    return torch.randn(64, 1, generator=torch.Generator().manual_seed(0))


def test_euler_many_steps_reaches_analytic_target(x0):
    out = EulerSampler(num_steps=2001, grid="uniform")(gauss_velocity, x0)
    torch.testing.assert_close(out.sample, analytic_target(x0), atol=2e-3, rtol=0)
    coarse = EulerSampler(num_steps=11, grid="uniform")(gauss_velocity, x0)
    assert (coarse.sample - analytic_target(x0)).abs().max() > 1e-2  # the test can tell a coarse solve apart


def test_heun_more_accurate_than_euler_at_same_nfe(x0):
    euler, heun = EulerSampler(num_steps=21, grid="uniform"), HeunSampler(num_steps=11, grid="uniform")
    assert euler.nfe() == heun.nfe() == 20
    err_e = (euler(gauss_velocity, x0).sample - analytic_target(x0)).abs().max()
    err_h = (heun(gauss_velocity, x0).sample - analytic_target(x0)).abs().max()
    assert err_h < err_e / 5


def test_heun_second_order_convergence(x0):
    errs = [(HeunSampler(n, "uniform")(gauss_velocity, x0.double()).sample - analytic_target(x0.double())).abs().max()
            for n in (11, 21)]
    assert math.log2(errs[0] / errs[1]) > 1.7


@pytest.mark.parametrize("name,grid,n,expected", [("euler", "official", 20, 19), ("euler", "uniform", 8, 7),
                                                  ("heun", "shifted", 8, 14), ("heun", "official", 30, 58)])
def test_exact_nfe(name, grid, n, expected):
    calls = []

    def fn(x, t):
        calls.append(t.clone())
        return torch.zeros_like(x)

    sampler = get_sampler(name, num_steps=n, grid=grid)
    out = sampler(fn, torch.zeros(2, 3))
    assert sampler.nfe() == out.nfe == len(calls) == expected
    assert all(c.shape == (2,) and c.dtype == torch.float32 for c in calls)
    if name == "euler":
        assert torch.equal(torch.stack([c[0] for c in calls]), out.times[:-1])  # t = 1 never fed to the model


def test_sampler_parity_arithmetic_replay():
    """Official Euler update (dt in float32, model time t_k) reproduced by replaying the reference velocities."""
    ref = load_parity("sampler")
    step = iter(range(19))
    seen_t = []

    def replay(x, t):
        seen_t.append(t[0])
        return ref["velocities"][next(step)]

    out = EulerSampler(num_steps=20, grid="official")(replay, ref["x_init"], return_trajectory=True)
    assert torch.equal(torch.stack(seen_t), ref["model_t"])
    torch.testing.assert_close(out.trajectory, ref["trajectory"], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sample, ref["sample"], atol=1e-6, rtol=0)


def test_trajectory_shape_and_callback():
    seen = []
    out = EulerSampler(5, "uniform")(lambda x, t: torch.ones_like(x), torch.zeros(2, 3), return_trajectory=True,
                                     callback=lambda k, t, x, v: seen.append(k))
    assert out.trajectory.shape == (5, 2, 3) and seen == [0, 1, 2, 3]
    torch.testing.assert_close(out.sample, torch.ones(2, 3))  # constant velocity 1 over [0, 1]


def test_state_is_float32_with_low_precision_model():
    out = EulerSampler(5, "uniform")(lambda x, t: torch.ones_like(x, dtype=torch.bfloat16), torch.zeros(2, 3))
    assert out.sample.dtype == torch.float32


def test_explicit_grid_and_errors():
    out = EulerSampler(20, "official")(lambda x, t: torch.ones_like(x), torch.zeros(1), grid=shifted_grid(4, 2.0))
    assert out.nfe == 3
    with pytest.raises(ValueError, match="num_steps=25"):
        EulerSampler(25, "official")
    with pytest.raises(ValueError, match="strictly increasing"):
        EulerSampler()(lambda x, t: x, torch.zeros(1), grid=uniform_grid(4).flip(0))
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("dpm")
    with pytest.raises(ValueError, match="returned shape"):
        EulerSampler(5, "uniform")(lambda x, t: x[:1], torch.zeros(2, 3))


def test_heun_final_euler_step_for_data_estimate_velocities():
    """A velocity derived from a data estimate, (x1 - x) / max(1 - t, 0.05), is only bounded at t = 1: full Heun
    lands short of x1 on the official grid, Euler and Heun with a final Euler step land on it; the step into
    t = 1 never calls the model, so the count is 2 (N - 1) - 1; 'heun' for such a model means that variant."""
    x1 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    times = []

    def data_estimate(x, t):
        times.append(float(t[0]))
        gap = (1 - t).clamp(min=0.05).view(-1, 1)
        return (x1 - x) / gap

    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    full = HeunSampler(num_steps=20, grid="official")(data_estimate, x0).sample
    assert (full - x1).abs().max() > 0.02  # the corrector at t = 1 covers only part of the last interval
    times.clear()
    ending = HeunSampler(num_steps=20, grid="official", final_step="euler")
    out = ending(data_estimate, x0)
    torch.testing.assert_close(out.sample, x1, atol=1e-5, rtol=1e-5)
    assert out.nfe == ending.nfe() == len(times) == 37 and max(times) < 1
    torch.testing.assert_close(EulerSampler(20, "official")(data_estimate, x0).sample, x1, atol=1e-5, rtol=1e-5)
    # the last interval alone changes: on a velocity defined at t = 1 the first N - 2 intervals are the same steps
    traj_full = HeunSampler(11, "uniform")(gauss_velocity, x0, return_trajectory=True).trajectory
    traj_end = HeunSampler(11, "uniform", final_step="euler")(gauss_velocity, x0, return_trajectory=True).trajectory
    torch.testing.assert_close(traj_end[:-1], traj_full[:-1])
    assert not torch.allclose(traj_end[-1], traj_full[-1])

    resolved = get_sampler("heun", num_steps=20, grid="official", data_estimate=True)
    assert isinstance(resolved, HeunSampler) and resolved.final_step == "euler"
    assert get_sampler("heun", num_steps=20).final_step == "heun"
    with pytest.raises(ValueError, match=r"query_residual.*final_step='euler'"):
        get_sampler(HeunSampler(20), data_estimate=True)
    assert get_sampler(ending, data_estimate=True) is ending
    with pytest.raises(ValueError, match="final_step must be"):
        HeunSampler(20, final_step="rk4")
