"""The flow-matching path: the one place where lavinkit's time convention is stated.

Convention (the official LaVin-DiT checkpoint's, SiT's ``Linear`` path with velocity prediction):

* ``t = 0`` is pure noise ``x0 ~ N(0, I)``, ``t = 1`` is data ``x1``;
* the interpolant is ``x_t = t * x1 + (1 - t) * x0``;
* the network predicts the velocity ``dx_t/dt = x1 - x0``;
* sampling integrates the ODE forward in ``t`` from 0 (noise) to 1 (data).

Every other module of lavinkit (time samplers, objective, grids, samplers, guidance, pipeline) builds on the
functions below and never restates or flips the convention.

Rectified-flow codebases (SD3, Flux, Lumina 2, diffusers ``FlowMatchEulerDiscreteScheduler``) use the
opposite direction: ``x_s = (1 - s) * data + s * noise`` with ``s = 1`` at noise and the velocity
``noise - data``. :func:`time_from_rectified_flow` and :func:`velocity_from_rectified_flow` convert
(and their inverses go back), so a rectified-flow model can be sampled with lavinkit's samplers and a
lavinkit model with a rectified-flow scheduler.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "broadcast_time",
    "interpolate",
    "velocity_target",
    "data_from_velocity",
    "noise_from_velocity",
    "shift_time",
    "time_from_rectified_flow",
    "time_to_rectified_flow",
    "velocity_from_rectified_flow",
    "velocity_to_rectified_flow",
]


def broadcast_time(t: Tensor | float, like: Tensor) -> Tensor:
    """Reshape flow time for broadcasting against ``like``.

    Args:
        t: scalar, ``[]`` or ``[B]`` flow time.
        like: ``[B, ...]`` tensor.

    Returns:
        ``[B, 1, ..., 1]`` (or ``[]`` for a scalar) tensor on ``like``'s device, in ``like``'s dtype.
    """
    t = torch.as_tensor(t, device=like.device, dtype=like.dtype)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"flow time must be a scalar or [B] with B={like.shape[0]}, got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor | float) -> Tensor:
    """``x_t = t * x1 + (1 - t) * x0``.

    Args:
        x0: ``[B, ...]`` noise.
        x1: ``[B, ...]`` data.
        t: ``[B]`` (or scalar) time in [0, 1]; 0 returns ``x0``, 1 returns ``x1``.
    """
    tb = broadcast_time(t, x1)
    return tb * x1 + (1 - tb) * x0


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    """The conditional velocity ``d x_t / d t = x1 - x0`` (``[B, ...]``), independent of ``t``."""
    return x1 - x0


def data_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """Data estimate ``x1 = x_t + (1 - t) * v`` from a velocity prediction (``[B, ...]``)."""
    return x_t + (1 - broadcast_time(t, x_t)) * v


def noise_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    """Noise estimate ``x0 = x_t - t * v`` from a velocity prediction (``[B, ...]``)."""
    return x_t - broadcast_time(t, x_t) * v


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Official time shift ``t <- t / (t + shift * (1 - t))``.

    ``shift > 1`` moves mass towards ``t = 0`` (noise), ``shift < 1`` towards data, ``shift = 1`` is the
    identity. Endpoints stay fixed. Works element-wise on any shape.
    """
    if shift <= 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    if shift == 1:
        return t
    return t / (t + shift * (1 - t))


def time_from_rectified_flow(sigma: Tensor | float) -> Tensor | float:
    """Rectified-flow ``sigma`` (1 = noise) -> lavinkit ``t`` (0 = noise): ``t = 1 - sigma``."""
    return 1 - sigma


def time_to_rectified_flow(t: Tensor | float) -> Tensor | float:
    """lavinkit ``t`` -> rectified-flow ``sigma``: ``sigma = 1 - t``."""
    return 1 - t


def velocity_from_rectified_flow(v_rf: Tensor) -> Tensor:
    """Rectified-flow velocity ``noise - data`` -> lavinkit velocity ``data - noise`` (sign flip)."""
    return -v_rf


def velocity_to_rectified_flow(v: Tensor) -> Tensor:
    """lavinkit velocity ``data - noise`` -> rectified-flow velocity ``noise - data`` (sign flip)."""
    return -v
