"""bfloat16 training on CPUs that compute it natively, float32 on the others.

The CPU recipes train with ``precision: bf16-mixed``: on a CPU with native bfloat16 arithmetic (AVX512-BF16 or
AMX on x86, BF16 on Arm) that is faster than float32. A CPU without it (an AVX2-only x86, for instance) has
oneDNN emulate bfloat16, which is far slower than float32: on a 2-core AVX2 EPYC, a 1536 x 192 x 768 matmul ran
at 1.6 GFLOP/s in bfloat16 and 57 GFLOP/s in float32, and a training step of the quickstart ST-VAE (one
thread) took 44.1 s instead of 1.58 s. :func:`resolve_cpu_precision` turns a bfloat16 precision on such a CPU into ``32-true``;
``lavinkit fit`` applies it unless ``--cpu_bf16 always`` is given.

Whether bfloat16 is slow is measured, not looked up (instruction-set names do not tell whether oneDNN has a
native kernel for every operation): :func:`cpu_bf16_slowdown` times one matmul and one convolution in both
dtypes, once per process.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

__all__ = ["CpuBf16Mode", "CPU_BF16_MODES", "BF16_SLOWDOWN_LIMIT", "cpu_bf16_slowdown", "resolve_cpu_precision"]

# ``lavinkit fit --cpu_bf16``: auto = float32 where bfloat16 is emulated; always = the recipe's precision as written
CpuBf16Mode = Literal["auto", "always"]
CPU_BF16_MODES = get_args(CpuBf16Mode)

# bfloat16 slower than float32 by more than this factor counts as emulated (native kernels run at 0.3-1x the
# float32 time; emulated ones at 10-40x)
BF16_SLOWDOWN_LIMIT = 1.5


def _best_time(fn, repeats: int = 3) -> float:
    fn()  # warm-up: oneDNN builds its kernel on the first call
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bf16_slowdown() -> float:
    """Time of bfloat16 over float32 on this CPU, for a 512^3 matmul plus a 3x3 convolution over ``[2, 64, 32, 32]``.

    The best of three runs of each, after a warm-up (under a second on a CPU that emulates bfloat16); cached for
    the process. Below 1: bfloat16 is faster.
    """
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 512, generator=gen), torch.randn(512, 512, generator=gen)
    x, w = torch.randn(2, 64, 32, 32, generator=gen), torch.randn(64, 64, 3, 3, generator=gen)

    def run(dtype: torch.dtype) -> float:
        a_, b_, x_, w_ = (t.to(dtype) for t in (a, b, x, w))
        return _best_time(lambda: a_ @ b_) + _best_time(lambda: F.conv2d(x_, w_, padding=1))

    with torch.inference_mode():
        return run(torch.bfloat16) / run(torch.float32)


def _runs_on_cpu(accelerator: Any) -> bool:
    name = str(accelerator).lower()
    if name == "cpu":
        return True
    if name != "auto":
        return False
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def resolve_cpu_precision(precision: Any, accelerator: Any, mode: CpuBf16Mode = "auto",
                          slowdown: float | None = None) -> tuple[Any, str | None]:
    """The Trainer precision to train with, and why it differs from the one asked for (``None`` if it does not).

    Args:
        precision: the recipe's ``trainer.precision`` (e.g. ``"bf16-mixed"``, ``"32-true"``, ``16``).
        accelerator: the recipe's ``trainer.accelerator`` (``"auto"`` counts as the CPU when no CUDA or MPS device
            is present).
        mode: ``"auto"``: a bfloat16 precision on a CPU that emulates bfloat16 becomes ``"32-true"``;
            ``"always"``: the precision is kept.
        slowdown: bfloat16 time over float32 time; measured with :func:`cpu_bf16_slowdown` when ``None`` and
            needed.
    """
    if mode not in CPU_BF16_MODES:
        raise ValueError(f"cpu_bf16 must be one of {', '.join(CPU_BF16_MODES)}, got {mode!r}")
    if mode == "always" or not str(precision).startswith("bf16") or not _runs_on_cpu(accelerator):
        return precision, None
    slowdown = cpu_bf16_slowdown() if slowdown is None else float(slowdown)
    if slowdown <= BF16_SLOWDOWN_LIMIT:
        return precision, None
    return "32-true", (f"trainer.precision={precision} on a CPU without native bfloat16 (bfloat16 measured "
                       f"{slowdown:.0f}x slower than float32 here): training with 32-true instead; "
                       "--cpu_bf16 always keeps bfloat16")
