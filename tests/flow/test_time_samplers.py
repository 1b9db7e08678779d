import pytest
import torch

from lavinkit.flow import LogitNormalTimeSampler, ShiftedTimeSampler, UniformTimeSampler, shift_time
from tests.conftest import load_parity


def test_logit_normal_matches_official_draws():
    ref = load_parity("transport_train")
    t = LogitNormalTimeSampler(seed=42)(2)
    torch.testing.assert_close(t, ref["t"], atol=1e-6, rtol=1e-6)
    g = torch.Generator().manual_seed(42)
    torch.testing.assert_close(LogitNormalTimeSampler()(2, generator=g), ref["t"], atol=1e-6, rtol=1e-6)


def test_per_sample_draws_follow_official_order_for_large_batches():
    # torch's CPU normal changes algorithm at 16 elements; the official code draws one sample at a time
    g = torch.Generator().manual_seed(42)
    expected = torch.sigmoid(torch.cat([torch.randn(1, generator=g) for _ in range(20)]))
    torch.testing.assert_close(LogitNormalTimeSampler(seed=42)(20), expected, atol=0, rtol=0)
    fast = LogitNormalTimeSampler(seed=42, per_sample_draws=False)(20)
    assert fast.shape == (20,) and not torch.equal(fast, expected)


def test_seeded_sampler_is_a_stream_and_reproducible():
    a, b = LogitNormalTimeSampler(seed=1), LogitNormalTimeSampler(seed=1)
    first, second = a(4), a(4)
    assert not torch.equal(first, second)
    assert torch.equal(b(4), first)


@pytest.mark.parametrize("sampler", [UniformTimeSampler(), LogitNormalTimeSampler(mean=-0.5, std=2.0),
                                     ShiftedTimeSampler(LogitNormalTimeSampler(), shift=3.0)])
def test_range_dtype_device(sampler):
    t = sampler(1000, generator=torch.Generator().manual_seed(0), device="cpu")
    assert t.dtype == torch.float32 and t.shape == (1000,)
    assert bool((t >= 0).all()) and bool((t <= 1).all())


def test_logit_normal_moments():
    t = LogitNormalTimeSampler(mean=1.0, std=0.5, per_sample_draws=False)(20000, generator=torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 1.0) < 0.02 and abs(logit.std().item() - 0.5) < 0.02


def test_uniform_interval():
    t = UniformTimeSampler(0.2, 0.4)(5000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.2 and t.max() <= 0.4 and abs(t.mean().item() - 0.3) < 0.01
    with pytest.raises(ValueError, match="t_min"):
        UniformTimeSampler(0.5, 0.4)


def test_shifted_applies_official_formula():
    base = UniformTimeSampler()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(ShiftedTimeSampler(base, 2.5)(64, generator=g1), shift_time(base(64, generator=g2), 2.5))
    mean_shifted = ShiftedTimeSampler(base, 3.0)(4000, generator=torch.Generator().manual_seed(0)).mean()
    assert mean_shifted < 0.4  # shift > 1 moves mass towards noise (t = 0)


def test_yaml_class_path():
    from jsonargparse import ArgumentParser

    from lavinkit.flow import TimeSampler

    parser = ArgumentParser()
    parser.add_argument("--ts", type=TimeSampler)
    cfg = parser.parse_args(["--ts", '{"class_path": "lavinkit.flow.ShiftedTimeSampler", "init_args": '
                             '{"shift": 2.0, "base": {"class_path": "lavinkit.flow.LogitNormalTimeSampler", '
                             '"init_args": {"std": 0.8, "seed": 5}}}}'])
    ts = parser.instantiate(cfg).ts
    assert isinstance(ts, ShiftedTimeSampler) and ts.shift == 2.0 and ts.base.std == 0.8
    assert ts(3).shape == (3,)
