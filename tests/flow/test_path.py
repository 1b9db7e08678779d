import pytest
import torch

from lavinkit.flow import (
    data_from_velocity,
    interpolate,
    noise_from_velocity,
    shift_time,
    time_from_rectified_flow,
    velocity_from_rectified_flow,
    velocity_target,
)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 1, 2, 2, generator=g), torch.randn(3, 4, 1, 2, 2, generator=g)


def test_endpoints(pair):
    x0, x1 = pair
    assert torch.equal(interpolate(x0, x1, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(3)), x1)
    assert torch.equal(interpolate(x0, x1, 0.0), x0)


def test_velocity_is_time_derivative_and_points_to_data(pair):
    x0, x1 = pair
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    h = 1e-6
    x0d, x1d = x0.double(), x1.double()
    fd = (interpolate(x0d, x1d, t + h) - interpolate(x0d, x1d, t - h)) / (2 * h)
    torch.testing.assert_close(fd, velocity_target(x0d, x1d))
    # moving along +v from x_t gets closer to the data, not to the noise
    xt = interpolate(x0, x1, torch.full((3,), 0.5))
    step = xt + 0.1 * velocity_target(x0, x1)
    assert (step - x1).norm() < (xt - x1).norm()
    assert (step - x0).norm() > (xt - x0).norm()


def test_estimates_from_velocity_recover_endpoints(pair):
    x0, x1 = pair
    t = torch.tensor([0.2, 0.5, 0.7])
    xt, v = interpolate(x0, x1, t), velocity_target(x0, x1)
    torch.testing.assert_close(data_from_velocity(xt, v, t), x1)
    torch.testing.assert_close(noise_from_velocity(xt, v, t), x0)


def test_rectified_flow_conversion(pair):
    x0, x1 = pair
    sigma = torch.tensor([0.25, 0.5, 1.0])
    rf_xs = (1 - sigma.view(-1, 1, 1, 1, 1)) * x1 + sigma.view(-1, 1, 1, 1, 1) * x0  # RF: sigma=1 noise
    t = time_from_rectified_flow(sigma)
    torch.testing.assert_close(interpolate(x0, x1, t), rf_xs)
    torch.testing.assert_close(velocity_from_rectified_flow(x0 - x1), velocity_target(x0, x1))


def test_shift_time():
    t = torch.linspace(0, 1, 11)
    assert torch.equal(shift_time(t, 1.0), t)
    s = shift_time(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and bool((s[1:-1] < t[1:-1]).all())
    with pytest.raises(ValueError, match="shift"):
        shift_time(t, 0.0)


def test_bad_time_shape(pair):
    x0, x1 = pair
    with pytest.raises(ValueError, match="B=3"):
        interpolate(x0, x1, torch.zeros(2))
