"""Fixed-grid ODE samplers for the flow ODE ``dx/dt = v(x, t)``, integrated from t = 0 (noise) to t = 1 (data).

Number of model evaluations (NFE), exact, for a grid of ``N`` points (``num_steps = N``, see
``lavinkit.flow.grids``):

* :class:`EulerSampler`: ``N - 1``. ``x_{k+1} = x_k + (t_{k+1} - t_k) * v(x_k, t_k)`` for ``k = 0..N-2``; the
  last point ``t = 1`` is never fed to the model. With the official 20-point grid this is the official
  sampler (torchdiffeq fixed-grid Euler), 19 evaluations.
* :class:`HeunSampler`: ``2 (N - 1)``. Heun's second-order predictor-corrector on every interval, including
  the last one (the model is evaluated at ``t = 1``, which is well defined for a velocity-predicting model).
  With ``final_step="euler"``: ``2 (N - 1) - 1``, the last interval is an Euler step, so ``t = 1`` is never fed
  to the model (k-diffusion's rule for the step into the data end): for a model whose velocity is derived from
  a data estimate, ``(x1 - x_t) / (1 - t)``, the velocity at ``t = 1`` is not defined (see
  :func:`check_sampler_for_data_estimate`).

"Model evaluation" means one call of the velocity function; with classifier-free guidance
(``lavinkit.flow.guidance``) one call is one batched forward of the conditional and unconditional rows.

Numerics: the ODE state and the step sizes ``dt = t_{k+1} - t_k`` are float32 whatever the model's
precision (velocities are cast to float32 before the update); the time passed to the model is
``t_k`` broadcast to ``[B]`` in float32. The returned sample is float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lavinkit.flow.grids import TimeGrid, get_grid

__all__ = ["VelocityFn", "SampleOutput", "euler_sample", "heun_sample", "ODESampler", "EulerSampler", "HeunSampler",
           "SAMPLERS", "get_sampler", "check_sampler_for_data_estimate"]  # fmt: skip

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``fn(x [B, ...] float32, t [B] float32) -> v [B, ...]``."""

StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]
"""``callback(k, t_k [], x_k [B, ...], v_k [B, ...])`` called after each model evaluation at a grid point."""


@dataclass
class SampleOutput:
    """Result of an ODE solve.

    Attributes:
        sample: ``[B, ...]`` float32 state at t = 1.
        times: ``[N]`` float32 grid used.
        nfe: number of velocity-function calls made.
        trajectory: ``[N, B, ...]`` states at every grid point (``trajectory[0]`` = initial noise), or None.
    """

    sample: Tensor
    times: Tensor
    nfe: int
    trajectory: Tensor | None = None


def _prepare(x: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
    grid = grid.to(device=x.device, dtype=torch.float32)
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"time grid must be 1-D with >= 2 points, got shape {tuple(grid.shape)}")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("time grid must be strictly increasing (t = 0 noise -> t = 1 data)")
    return x.float(), grid


def _call(fn: VelocityFn, x: Tensor, t: Tensor) -> Tensor:
    v = fn(x, t.expand(x.shape[0]))
    if v.shape != x.shape:
        raise ValueError(f"velocity function returned shape {tuple(v.shape)} for a state of shape {tuple(x.shape)}")
    return v.float()


@torch.no_grad()
def euler_sample(
    fn: VelocityFn,
    x: Tensor,
    grid: Tensor,
    *,
    return_trajectory: bool = False,
    callback: StepCallback | None = None,
) -> SampleOutput:
    """Explicit Euler over ``grid`` (``N`` points, ``N - 1`` evaluations).

    Args:
        fn: velocity function.
        x: ``[B, ...]`` initial noise at ``grid[0]``.
        grid: ``[N]`` increasing times.
    """
    x, grid = _prepare(x, grid)
    traj = [x] if return_trajectory else None
    nfe = 0
    for k in range(grid.numel() - 1):
        t0, t1 = grid[k], grid[k + 1]
        v = _call(fn, x, t0)
        nfe += 1
        if callback is not None:
            callback(k, t0, x, v)
        x = x + (t1 - t0) * v
        if traj is not None:
            traj.append(x)
    return SampleOutput(sample=x, times=grid, nfe=nfe, trajectory=torch.stack(traj) if traj is not None else None)


@torch.no_grad()
def heun_sample(
    fn: VelocityFn,
    x: Tensor,
    grid: Tensor,
    *,
    return_trajectory: bool = False,
    callback: StepCallback | None = None,
    euler_last_step: bool = False,
) -> SampleOutput:
    """Heun (explicit trapezoid) over ``grid`` (``N`` points, ``2 (N - 1)`` evaluations; ``euler_last_step``: the
    last interval is an Euler step, ``2 (N - 1) - 1`` evaluations, the model never sees ``grid[-1]``)."""
    x, grid = _prepare(x, grid)
    traj = [x] if return_trajectory else None
    nfe = 0
    last = grid.numel() - 2
    for k in range(grid.numel() - 1):
        t0, t1 = grid[k], grid[k + 1]
        dt = t1 - t0
        v0 = _call(fn, x, t0)
        nfe += 1
        if callback is not None:
            callback(k, t0, x, v0)
        if euler_last_step and k == last:
            x = x + dt * v0
        else:
            v1 = _call(fn, x + dt * v0, t1)
            nfe += 1
            x = x + dt * (0.5 * (v0 + v1))
        if traj is not None:
            traj.append(x)
    return SampleOutput(sample=x, times=grid, nfe=nfe, trajectory=torch.stack(traj) if traj is not None else None)


class ODESampler(ABC):
    """A fixed-grid ODE sampler with its default step count and grid (usable from YAML by ``class_path``).

    Args:
        num_steps: number of grid points (official ``--timesteps``; see ``lavinkit.flow.grids``).
        grid: ``"official"`` (20/30/40 points only), ``"uniform"``, ``"shifted"`` or a ``TimeGrid``.
    """

    evals_per_interval: int = 1

    def __init__(self, num_steps: int = 20, grid: str | TimeGrid = "official") -> None:
        self.grid = get_grid(grid)
        self.num_steps = int(num_steps)
        self.times(self.num_steps)  # validate the combination eagerly (e.g. official grid with 25 points)

    def times(self, num_steps: int | None = None) -> Tensor:
        """The float32 ``[N]`` grid for ``num_steps`` points (default: the sampler's)."""
        return self.grid(self.num_steps if num_steps is None else int(num_steps))

    def nfe(self, num_steps: int | None = None) -> int:
        """Exact number of velocity-function calls for ``num_steps`` grid points."""
        n = self.num_steps if num_steps is None else int(num_steps)
        return self.evals_per_interval * (n - 1)

    @abstractmethod
    def solve(self, fn: VelocityFn, x: Tensor, grid: Tensor, **kwargs) -> SampleOutput:
        """Integrate ``x`` (noise at ``grid[0]``) over ``grid`` with velocity ``fn``."""

    def __call__(
        self,
        fn: VelocityFn,
        x_init: Tensor,
        *,
        num_steps: int | None = None,
        grid: Tensor | None = None,
        return_trajectory: bool = False,
        callback: StepCallback | None = None,
    ) -> SampleOutput:
        """Integrate from ``x_init`` (noise, ``[B, ...]``) at t = 0 to t = 1.

        Args:
            num_steps: override the number of grid points.
            grid: explicit ``[N]`` grid (overrides ``num_steps`` and the grid family).
        """
        times = grid if grid is not None else self.times(num_steps)
        return self.solve(fn, x_init, times, return_trajectory=return_trajectory, callback=callback)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps}, grid={self.grid!r})"


class EulerSampler(ODESampler):
    """Explicit Euler; NFE = ``num_steps - 1``."""

    evals_per_interval = 1

    def solve(self, fn: VelocityFn, x: Tensor, grid: Tensor, **kwargs) -> SampleOutput:
        return euler_sample(fn, x, grid, **kwargs)


class HeunSampler(ODESampler):
    """Heun's second-order method; NFE = ``2 (num_steps - 1)``.

    Args:
        final_step: ``"heun"`` (every interval, the model evaluated at ``t = 1``) or ``"euler"`` (the last interval
            is an Euler step, one evaluation fewer; for models whose velocity is not defined at ``t = 1``).
    """

    evals_per_interval = 2

    def __init__(self, num_steps: int = 20, grid: str | TimeGrid = "official",
                 final_step: Literal["heun", "euler"] = "heun") -> None:
        if final_step not in ("heun", "euler"):
            raise ValueError(f"final_step must be 'heun' or 'euler', got {final_step!r}")
        super().__init__(num_steps, grid)
        self.final_step = final_step

    def nfe(self, num_steps: int | None = None) -> int:
        return super().nfe(num_steps) - (self.final_step == "euler")

    def solve(self, fn: VelocityFn, x: Tensor, grid: Tensor, **kwargs) -> SampleOutput:
        return heun_sample(fn, x, grid, euler_last_step=self.final_step == "euler", **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps}, grid={self.grid!r}, final_step={self.final_step!r})"


SAMPLERS: dict[str, type[ODESampler]] = {"euler": EulerSampler, "heun": HeunSampler}


def get_sampler(sampler: str | ODESampler, num_steps: int = 20, grid: str | TimeGrid = "official", *,
                data_estimate: bool = False) -> ODESampler:
    """Resolve a sampler name (``euler``, ``heun``) into an instance, or pass an instance through.

    ``data_estimate``: the model derives its velocity from a data estimate (``JDiTConfig.query_residual``); the
    name ``heun`` then gives ``HeunSampler(final_step="euler")`` and an instance is checked with
    :func:`check_sampler_for_data_estimate`.
    """
    if isinstance(sampler, ODESampler):
        if data_estimate:
            check_sampler_for_data_estimate(sampler)
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {sorted(SAMPLERS)} or pass an ODESampler")
    if sampler == "heun" and data_estimate:
        return HeunSampler(num_steps=num_steps, grid=grid, final_step="euler")
    return SAMPLERS[sampler](num_steps=num_steps, grid=grid)


def check_sampler_for_data_estimate(sampler: ODESampler) -> None:
    """Refuse a sampler that evaluates the model at ``t = 1`` for a model whose velocity comes from a data estimate.

    Such a velocity, ``(x1 - x_t) / max(1 - t, floor)``, is only bounded by the floor at ``t = 1``: Heun's corrector
    there averages in a velocity that covers a fraction of the last interval (with the 20-point official grid the
    sample lands at about 0.9 of the answer). Euler, and Heun with ``final_step="euler"``, never evaluate ``t = 1``.

    Raises:
        ValueError: for a :class:`HeunSampler` with ``final_step="heun"``.
    """
    if isinstance(sampler, HeunSampler) and sampler.final_step == "heun":
        raise ValueError("this J-DiT derives its velocity from a data estimate (query_residual), which is not defined "
                         "at t = 1, where HeunSampler's last corrector evaluates it; use "
                         "HeunSampler(final_step='euler') or EulerSampler")
