"""Sampling time grids (t = 0 noise -> t = 1 data; see ``lavinkit.flow.path``).

Grid semantics, the same for every grid: ``num_steps`` is the **number of grid points**, exactly like the
official ``--timesteps``. A grid of ``N`` points starts at 0.0, ends at 1.0 and has ``N - 1`` intervals;
an ODE sampler makes one update per interval (Euler: ``N - 1`` model evaluations, Heun: ``2 (N - 1)``;
see ``lavinkit.flow.samplers``). So ``num_steps=20`` means 19 Euler evaluations whichever grid is chosen,
and the official 20-point table and a 20-point uniform grid cost the same.

Grids are float32 tensors. Grids are small classes (``grid(num_steps) -> Tensor [N]``) so samplers take
either a registry name (``"official"``, ``"uniform"``, ``"shifted"``) or an instance, e.g. from YAML::

    grid: {class_path: lavinkit.flow.ShiftedGrid, init_args: {shift: 3.0}}
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lavinkit.flow.path import shift_time

__all__ = [
    "OFFICIAL_GRIDS",
    "TimeGrid",
    "OfficialGrid",
    "UniformGrid",
    "ShiftedGrid",
    "GRIDS",
    "get_grid",
    "official_grid",
    "uniform_grid",
    "shifted_grid",
]

# The official hard-coded tables (decimal literals as in lib/transport), keyed by number of points.
OFFICIAL_GRIDS: dict[int, tuple[float, ...]] = {
    20: (0.0, 0.0056, 0.0111, 0.0167, 0.0222, 0.0278, 0.0333, 0.0389, 0.0444, 0.05, 0.0524, 0.073,
         0.1148, 0.1777, 0.2618, 0.3671, 0.4936, 0.6412, 0.81, 1.0),
    30: (0.0, 0.0036, 0.0071, 0.0107, 0.0143, 0.0179, 0.0214, 0.025, 0.0286, 0.0321, 0.0357, 0.0393,
         0.0429, 0.0464, 0.05, 0.0511, 0.06, 0.0779, 0.1049, 0.141, 0.1862, 0.2403, 0.3036, 0.3759,
         0.4573, 0.5477, 0.6472, 0.7557, 0.8733, 1.0),
    40: (0.0, 0.0026, 0.0053, 0.0079, 0.0105, 0.0132, 0.0158, 0.0184, 0.0211, 0.0237, 0.0263,
         0.0289, 0.0316, 0.0342, 0.0368, 0.0395, 0.0421, 0.0447, 0.0474, 0.05, 0.0506, 0.0555, 0.0655,
         0.0804, 0.1004, 0.1253, 0.1553, 0.1902, 0.2302, 0.2752, 0.3251, 0.3801, 0.4401, 0.5051, 0.575,
         0.65, 0.73, 0.815, 0.905, 1.0),
}  # fmt: skip


def _check_points(num_steps: int, who: str) -> None:
    if int(num_steps) != num_steps or num_steps < 2:
        raise ValueError(f"{who}: num_steps is the number of grid points and must be an integer >= 2, got {num_steps}")


def official_grid(num_steps: int) -> Tensor:
    """The official table with ``num_steps`` points (20, 30 or 40 only), float32 ``[num_steps]``."""
    if num_steps not in OFFICIAL_GRIDS:
        raise ValueError(
            f"official grid: num_steps={num_steps} is not available; the official tables have "
            f"{sorted(OFFICIAL_GRIDS)} points (use grid 'uniform' or 'shifted' for other step counts)"
        )
    return torch.tensor(OFFICIAL_GRIDS[num_steps], dtype=torch.float32)


def uniform_grid(num_steps: int) -> Tensor:
    """``num_steps`` evenly spaced points from 0 to 1 (float32)."""
    _check_points(num_steps, "uniform grid")
    return torch.linspace(0.0, 1.0, int(num_steps), dtype=torch.float64).float()


def shifted_grid(num_steps: int, shift: float = 3.0) -> Tensor:
    """Uniform points mapped by ``t / (t + shift (1 - t))`` (float32); ``shift > 1`` crowds points near noise."""
    _check_points(num_steps, "shifted grid")
    return shift_time(torch.linspace(0.0, 1.0, int(num_steps), dtype=torch.float64), shift).float()


class TimeGrid(ABC):
    """A grid family: ``grid(num_steps) -> float32 [num_steps]`` from 0.0 to 1.0."""

    @abstractmethod
    def __call__(self, num_steps: int) -> Tensor:
        """Float32 ``[num_steps]`` times, increasing from 0.0 (noise) to 1.0 (data)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class OfficialGrid(TimeGrid):
    """The official 20/30/40-point tables."""

    def __call__(self, num_steps: int) -> Tensor:
        return official_grid(num_steps)


class UniformGrid(TimeGrid):
    """Evenly spaced points."""

    def __call__(self, num_steps: int) -> Tensor:
        return uniform_grid(num_steps)


class ShiftedGrid(TimeGrid):
    """Evenly spaced points under the official time shift (``shift = 1`` gives the uniform grid)."""

    def __init__(self, shift: float = 3.0) -> None:
        if shift <= 0:
            raise ValueError(f"ShiftedGrid shift must be > 0, got {shift}")
        self.shift = float(shift)

    def __call__(self, num_steps: int) -> Tensor:
        return shifted_grid(num_steps, self.shift)


GRIDS: dict[str, type[TimeGrid]] = {"official": OfficialGrid, "uniform": UniformGrid, "shifted": ShiftedGrid}


def get_grid(grid: str | TimeGrid) -> TimeGrid:
    """Resolve a registry name (``official``, ``uniform``, ``shifted``) or pass an instance through."""
    if isinstance(grid, TimeGrid):
        return grid
    if grid not in GRIDS:
        raise ValueError(f"unknown time grid {grid!r}; choose from {sorted(GRIDS)} or pass a TimeGrid instance")
    return GRIDS[grid]()
