"""THE seed helper: every derived random stream of lavinkit (data order, k per batch, shuffles, per-step training
draws, evaluation draws) is seeded from a tuple of parts, stably across processes, platforms and Python versions."""

from __future__ import annotations

import random
from typing import Any

import torch


def derive_rng(*parts: Any) -> random.Random:
    """A ``random.Random`` seeded from ``parts`` (string seeding hashes with sha512: stable across processes)."""
    return random.Random("/".join(str(p) for p in parts))


def derive_seed(*parts: Any) -> int:
    """A 63-bit integer seed derived from ``parts``."""
    return derive_rng(*parts).getrandbits(63)


def derive_generator(*parts: Any, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive_seed` of ``parts``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen


__all__ = ["derive_generator", "derive_rng", "derive_seed"]
