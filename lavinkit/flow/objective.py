"""Conditional flow-matching training objective (velocity prediction; convention in ``lavinkit.flow.path``).

Official loss (``lib/transport``, Linear path, velocity prediction): per sample
``mean((v - (x1 - x0))^2) + 0.1 * mean(|v - (x1 - x0)|)``, averaged over the batch. Both weights are
configurable here; the result is a dict of named terms so modules can log each one.

YAML::

    objective:
      class_path: lavinkit.flow.FlowMatchingObjective
      init_args:
        mse_weight: 1.0
        l1_weight: 0.1
        time_sampler: {class_path: lavinkit.flow.LogitNormalTimeSampler, init_args: {mean: 0.0, std: 1.0}}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lavinkit.flow.path import interpolate, velocity_target
from lavinkit.flow.time_samplers import LogitNormalTimeSampler, TimeSampler

__all__ = ["FlowSample", "FlowMatchingObjective", "velocity_loss"]


def velocity_loss(pred: Tensor, target: Tensor, mse_weight: float = 1.0, l1_weight: float = 0.1) -> dict[str, Tensor]:
    """Weighted per-sample MSE + L1 between predicted and target velocity.

    Args:
        pred: ``[B, ...]`` predicted velocity.
        target: ``[B, ...]`` target velocity ``x1 - x0``.
        mse_weight, l1_weight: term weights (official: 1.0 and 0.1).

    Returns:
        ``{"loss": [], "mse": [], "l1": [], "per_sample": [B]}``; ``mse``/``l1`` are unweighted batch means
        of the per-sample means over all non-batch dims, ``loss`` the weighted batch mean, computed in
        float32.
    """
    if pred.shape != target.shape:
        raise ValueError(f"velocity_loss: prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    diff = pred.float() - target.float()
    dims = tuple(range(1, diff.ndim))
    mse = diff.square().mean(dim=dims)  # [B]
    l1 = diff.abs().mean(dim=dims)  # [B]
    per_sample = mse_weight * mse + l1_weight * l1
    return {"loss": per_sample.mean(), "mse": mse.mean(), "l1": l1.mean(), "per_sample": per_sample}


@dataclass
class FlowSample:
    """One draw of the training path: ``x0`` noise, ``x1`` data, ``t [B]``, ``xt`` interpolant, ``target`` velocity."""

    x0: Tensor
    x1: Tensor
    t: Tensor
    xt: Tensor
    target: Tensor


class FlowMatchingObjective:
    """Draws ``t`` and noise, builds the interpolant and scores a velocity prediction.

    Args:
        time_sampler: distribution of ``t`` (default: logit-normal(0, 1), the official ``lognorm``).
        mse_weight: weight of the per-sample mean squared error (official 1.0).
        l1_weight: weight of the per-sample mean absolute error (official 0.1).
    """

    def __init__(self, time_sampler: TimeSampler | None = None, mse_weight: float = 1.0, l1_weight: float = 0.1) -> None:
        if mse_weight < 0 or l1_weight < 0 or mse_weight + l1_weight == 0:
            raise ValueError(f"FlowMatchingObjective: weights must be >= 0 and not both 0, got mse_weight={mse_weight}, l1_weight={l1_weight}")
        self.time_sampler = time_sampler if time_sampler is not None else LogitNormalTimeSampler()
        self.mse_weight = float(mse_weight)
        self.l1_weight = float(l1_weight)

    def prepare(
        self,
        x1: Tensor,
        *,
        t: Tensor | None = None,
        x0: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> FlowSample:
        """Build the training sample for data ``x1 [B, ...]``.

        Args:
            x1: data (clean target latents).
            t: optional ``[B]`` times; drawn from ``time_sampler`` with ``generator`` otherwise.
            x0: optional noise like ``x1``; drawn with ``noise_generator`` (on its device) otherwise.
        """
        batch = x1.shape[0]
        if t is None:
            t = self.time_sampler(batch, generator=generator, device=x1.device)
        t = t.to(device=x1.device, dtype=torch.float32)
        if x0 is None:
            gen_device = noise_generator.device if noise_generator is not None else x1.device
            x0 = torch.randn(x1.shape, generator=noise_generator, device=gen_device, dtype=x1.dtype).to(x1.device)
        elif x0.shape != x1.shape:
            raise ValueError(f"noise x0 shape {tuple(x0.shape)} != data x1 shape {tuple(x1.shape)}")
        xt = interpolate(x0, x1, t.to(x1.dtype))
        return FlowSample(x0=x0, x1=x1, t=t, xt=xt, target=velocity_target(x0, x1))

    def loss(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Named loss terms (see :func:`velocity_loss`)."""
        return velocity_loss(pred, target, self.mse_weight, self.l1_weight)

    def __call__(
        self,
        model: Callable[[Tensor, Tensor], Tensor],
        x1: Tensor,
        *,
        t: Tensor | None = None,
        x0: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise_generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Sample, run ``model(xt, t) -> v`` and return the loss terms plus ``"t"`` ``[B]``.

        Bind the condition beforehand, e.g. ``objective(lambda x, t: dit(x, t, ctx, lens), x1)``.
        """
        fs = self.prepare(x1, t=t, x0=x0, generator=generator, noise_generator=noise_generator)
        terms = self.loss(model(fs.xt, fs.t), fs.target)
        terms["t"] = fs.t
        return terms

    def __repr__(self) -> str:
        return f"FlowMatchingObjective(time_sampler={self.time_sampler!r}, mse_weight={self.mse_weight}, l1_weight={self.l1_weight})"
