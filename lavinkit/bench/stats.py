"""Summary statistics shared by the benchmarks: medians with their spread over repeated measurements."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, 10th and 90th percentile (interpolated), min, max, relative interquartile range and count of
    ``values`` (one value: every percentile is that value, the IQR 0)."""
    vs = sorted(values)
    if len(vs) > 1:
        deciles = statistics.quantiles(vs, n=10, method="inclusive")
        quartiles = statistics.quantiles(vs, n=4, method="inclusive")
        p10, p90, iqr = deciles[0], deciles[-1], quartiles[2] - quartiles[0]
    else:
        p10 = p90 = vs[0]
        iqr = 0.0
    median = statistics.median(vs)
    return {"median": median, "p10": p10, "p90": p90, "min": vs[0], "max": vs[-1],
            "rel_iqr": iqr / median if median > 0 else 0.0, "n": len(vs)}
