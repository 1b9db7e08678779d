"""Summarise the attention ablation: one row per variant from the CSV logs and the `lavinkit eval` reports.

    python recipes/ablation/summarize.py runs/ablation_attention   # -> prints and writes summary.md there
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path


def _column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def summarize(root: Path) -> str:
    lines = ["| variant | val loss (last) | train loss (last 100 steps) | s/step | PSNR | SSIM | beats identity | swap shift dB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in sorted(p for p in root.iterdir() if (p / "metrics.csv").exists()):
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        val = _column(rows, "val/loss")
        steps = [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss") not in (None, "")]
        last = max((s for s, _ in steps), default=0)
        train = [v for s, v in steps if s > last - 100]
        step_time = _column(rows, "train/step_time")
        psnr = ssim = beats = shift = math.nan
        report = run / "eval" / "eval.json"
        if report.exists():
            data = json.loads(report.read_text())
            means = [t["means"] for t in data["tasks"].values()]
            psnr = statistics.mean(m["psnr"] for m in means)
            ssim = statistics.mean(m["ssim"] for m in means)
            beats = f"{data['summary']['beats_identity']}/{data['summary']['tasks']}"
            shift = data["summary"]["mean_swap_shift_db"]
        fmt = lambda x, p=4: "n/a" if isinstance(x, float) and math.isnan(x) else (f"{x:.{p}f}" if isinstance(x, float) else str(x))  # noqa: E731
        lines.append(f"| {run.name} | {fmt(val[-1] if val else math.nan)} | {fmt(statistics.mean(train) if train else math.nan)} | "
                     f"{fmt(statistics.median(step_time) if step_time else math.nan, 3)} | {fmt(psnr, 2)} | {fmt(ssim)} | "
                     f"{beats if isinstance(beats, str) else 'n/a'} | {fmt(shift, 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation_attention")
    text = summarize(root)
    (root / "summary.md").write_text(text + "\n")
    print(text)
