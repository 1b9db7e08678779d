import json

import pytest
import torch

from lavinkit.flow import OFFICIAL_GRIDS, ShiftedGrid, get_grid, official_grid, shifted_grid, uniform_grid
from tests.conftest import PARITY, load_parity


@pytest.mark.parametrize("n", [20, 30, 40])
def test_official_tables_match_parity_manifest(n):
    manifest = json.loads((PARITY / "manifest.json").read_text())
    values = manifest["conventions"]["official_time_grids"][str(n)]
    assert torch.equal(official_grid(n), torch.tensor(values, dtype=torch.float32))
    assert len(OFFICIAL_GRIDS[n]) == n


def test_official_20_matches_sampler_vector():
    assert torch.equal(official_grid(20), load_parity("sampler")["t_grid"])


def test_official_rejects_other_step_counts():
    with pytest.raises(ValueError, match="num_steps=25"):
        official_grid(25)


@pytest.mark.parametrize("make", [uniform_grid, lambda n: shifted_grid(n, 3.0), lambda n: shifted_grid(n, 0.5)])
def test_points_endpoints_monotone(make):
    g = make(7)
    assert g.dtype == torch.float32 and g.shape == (7,)
    assert g[0] == 0 and g[-1] == 1 and bool((g[1:] > g[:-1]).all())


def test_shifted_grid_crowds_noise_end_and_shift_one_is_uniform():
    assert torch.equal(shifted_grid(9, 1.0), uniform_grid(9))
    assert shifted_grid(9, 3.0)[4] < uniform_grid(9)[4]
    assert torch.equal(ShiftedGrid(2.0)(5), shifted_grid(5, 2.0))


def test_registry():
    assert torch.equal(get_grid("official")(30), official_grid(30))
    with pytest.raises(ValueError, match="unknown time grid 'cosine'"):
        get_grid("cosine")
    with pytest.raises(ValueError, match="number of grid points"):
        uniform_grid(1)
