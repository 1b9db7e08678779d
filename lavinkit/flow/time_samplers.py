"""Training-time distributions of the flow time ``t`` (t = 0 noise, t = 1 data; see ``lavinkit.flow.path``).

Each sampler is a small class usable from YAML by ``class_path``::

    time_sampler:
      class_path: lavinkit.flow.LogitNormalTimeSampler
      init_args: {mean: 0.0, std: 1.0, seed: 42}

and is called as ``sampler(batch_size, generator=None, device=None) -> t [B] float32``. Randomness comes
from, in order: the ``generator`` passed to the call, the sampler's own CPU generator when it was built with
``seed``, else torch's global RNG. Draws always happen on the CPU (so a seed gives the same ``t`` on every
device) and the result is then moved to ``device``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lavinkit.flow.path import shift_time

__all__ = ["TimeSampler", "UniformTimeSampler", "LogitNormalTimeSampler", "ShiftedTimeSampler"]


class TimeSampler(ABC):
    """Base class: draws ``t [B]`` in [0, 1] (float32)."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None

    def _resolve_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        if generator is not None:
            return generator
        if self.seed is not None:
            if self._generator is None:
                self._generator = torch.Generator(device="cpu").manual_seed(int(self.seed))
            return self._generator
        return None

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        """Draw ``[batch_size]`` float32 times on the generator's device (CPU when none)."""

    def __call__(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """Return ``t [batch_size]`` float32 in [0, 1] on ``device`` (CPU by default)."""
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {batch_size}")
        t = self.sample(batch_size, self._resolve_generator(generator))
        return t.to(device=device) if device is not None else t

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class UniformTimeSampler(TimeSampler):
    """``t ~ U(t_min, t_max)``.

    Args:
        t_min, t_max: interval, ``0 <= t_min < t_max <= 1``.
        seed: optional seed of the sampler's own CPU generator.
    """

    def __init__(self, t_min: float = 0.0, t_max: float = 1.0, seed: int | None = None) -> None:
        super().__init__(seed)
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"UniformTimeSampler needs 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
        self.t_min = float(t_min)
        self.t_max = float(t_max)

    def sample(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(batch_size, generator=generator, device=_gen_device(generator), dtype=torch.float32)
        return self.t_min + (self.t_max - self.t_min) * u


class LogitNormalTimeSampler(TimeSampler):
    """``t = sigmoid(u)``, ``u ~ N(mean, std^2)`` (the official ``snr_type="lognorm"`` with mean 0, std 1).

    Args:
        mean, std: parameters of the normal in logit space.
        per_sample_draws: draw ``u`` one sample at a time with size ``(1,)`` exactly as the official
            ``Transport.sample`` does. torch's CPU normal sampler uses a different algorithm for 16 or more
            elements, so a single ``randn(B)`` differs from the official sequence once ``B >= 16``;
            ``False`` draws the batch at once (faster, still seeded and deterministic).
        seed: optional seed of the sampler's own CPU generator (the official Transport seeds 42).
    """

    def __init__(
        self, mean: float = 0.0, std: float = 1.0, per_sample_draws: bool = True, seed: int | None = None
    ) -> None:
        super().__init__(seed)
        if std <= 0:
            raise ValueError(f"LogitNormalTimeSampler std must be > 0, got {std}")
        self.mean = float(mean)
        self.std = float(std)
        self.per_sample_draws = bool(per_sample_draws)

    def sample(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        device = _gen_device(generator)
        if self.per_sample_draws:
            draws = [torch.randn(1, generator=generator, device=device) for _ in range(batch_size)]
            u = torch.cat(draws) if draws else torch.empty(0, device=device)
        else:
            u = torch.randn(batch_size, generator=generator, device=device)
        return torch.sigmoid(u * self.std + self.mean)


class ShiftedTimeSampler(TimeSampler):
    """Apply the official time shift ``t <- t / (t + shift * (1 - t))`` to another sampler's draws.

    ``shift > 1`` puts more training time near noise (useful for large token counts), ``shift = 1`` is the
    identity (the official setting).

    Args:
        base: the sampler whose draws are shifted (its own generator/seed rules apply).
        shift: positive shift factor.
    """

    def __init__(self, base: TimeSampler, shift: float = 1.0) -> None:
        super().__init__(None)
        if shift <= 0:
            raise ValueError(f"ShiftedTimeSampler shift must be > 0, got {shift}")
        self.base = base
        self.shift = float(shift)

    def __call__(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        return shift_time(self.base(batch_size, generator=generator, device=device), self.shift)

    def sample(self, batch_size: int, generator: torch.Generator | None) -> Tensor:
        return shift_time(self.base.sample(batch_size, generator), self.shift)
