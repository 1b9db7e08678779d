"""The evaluation report: per-query records, per-task means, tables (text and Markdown), summary, image grid."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["COLUMNS", "EvalReport", "GridRow", "TaskReport", "format_task_table", "task_means"]

# metric key -> (column label, format); the order of the tables. Keys not listed follow, sorted.
COLUMNS: dict[str, tuple[str, str]] = {
    "modality": ("modality", "s"),
    "count": ("n", "d"),
    "psnr": ("PSNR", ".2f"),
    "ssim": ("SSIM", ".4f"),
    "lpips": ("LPIPS", ".4f"),
    "identity_psnr": ("identity PSNR", ".2f"),
    "ceiling_psnr": ("ceiling PSNR", ".2f"),
    "beats_identity_db": ("beats identity dB", "+.2f"),
    "partner": ("swap partner", "s"),
    "swap_psnr": ("swapped PSNR", ".2f"),
    "swap_shift_db": ("swap shift dB", "+.2f"),
    "swap_change_psnr": ("swap vs pred PSNR", ".2f"),
    "swap_abs_change": ("swap change 0-255", ".2f"),
    "latent_mse": ("latent MSE", ".4f"),
}
# per-record numbers averaged per task (the rest of a record describes the query)
METRICS = ("psnr", "ssim", "lpips", "latent_mse", "identity_psnr", "identity_ssim", "identity_lpips", "ceiling_psnr",
           "ceiling_ssim", "ceiling_lpips", "beats_identity_db", "swap_psnr", "swap_ssim", "swap_lpips",
           "swap_ref_psnr", "pred_ref_psnr", "swap_shift_db", "swap_change_psnr", "swap_abs_change")
# the columns of the printed table (every number is in eval.json)
TABLE_KEYS = ("modality", "count", "psnr", "ssim", "lpips", "identity_psnr", "ceiling_psnr", "beats_identity_db",
              "partner", "swap_psnr", "swap_shift_db", "swap_change_psnr", "swap_abs_change", "latent_mse")


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    if spec == "d":
        return str(int(value))
    if spec == "s":
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(float(value), spec)


def format_task_table(rows: Mapping[str, Mapping[str, Any]], *, markdown: bool = True,
                      keys: Sequence[str] | None = None) -> str:
    """Per-task values as a Markdown (or fixed-width text) table, one row per task.

    Args:
        rows: ``{task: {key: number or str}}``; ``None`` / NaN show as ``-``.
        keys: the columns, in order (default: every key present, known ones in :data:`COLUMNS` order first).
    """
    present = {k for r in rows.values() for k, v in r.items() if v is not None}
    if keys is None:
        keys = [k for k in COLUMNS if k in present] + sorted(present - set(COLUMNS))
    else:
        keys = [k for k in keys if k in present]
    labels = ["task"] + [COLUMNS.get(k, (k, ""))[0] for k in keys]
    body = [[task] + [_cell(r.get(k), COLUMNS.get(k, (k, ".4f"))[1]) for k in keys] for task, r in rows.items()]
    if markdown:
        body = [[c.replace("|", "\\|") for c in row] for row in body]  # a pipe inside a cell would end it
        lines = ["| " + " | ".join(labels) + " |", "|" + "|".join(["---"] + ["---:"] * len(keys)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [labels, *body]) for i in range(len(labels))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [labels, *body]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def task_means(records: Sequence[Mapping[str, Any]], keys: Sequence[str] = METRICS) -> dict[str, float | None]:
    """Mean of each metric over records, skipping ``None`` / NaN (undefined) values; ``None`` when none is left."""
    out: dict[str, float | None] = {}
    for key in keys:
        values = [float(r[key]) for r in records if r.get(key) is not None and not math.isnan(float(r[key]))]
        if any(key in r for r in records):
            out[key] = sum(values) / len(values) if values else None
    return out


def _plain(value: Any) -> Any:
    """JSON-safe copy: NaN and +-inf (undefined, or a perfect match) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class GridRow:
    """One row of ``eval_grid.png``: the first query of a task.

    ``tiles``: ``[3, H, W]`` float images in [0, 1] (middle frame of clips), query | context input/target pairs
    | prediction | target | identity (the query) | swapped-context prediction (``None``: no partner).
    """

    task: str
    partner: str | None
    tiles: list[Tensor | None]


@dataclass
class TaskReport:
    """Results of one task: every (query, seed) record and the means over them."""

    name: str
    modality: str
    partner: str | None
    reference: str | None  # this task's reference kind (see lavinkit.evaluation.references)
    partner_reference: str | None
    queries: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def means(self) -> dict[str, float | None]:
        return task_means(self.records)

    def row(self) -> dict[str, Any]:
        """The table row: modality, query count, means and the partner name."""
        return {"modality": self.modality, "count": len(self.records), "partner": self.partner, **self.means}

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "partner": self.partner, "reference": self.reference,
                "partner_reference": self.partner_reference, "queries": list(self.queries),
                "count": len(self.records), "means": self.means, "records": self.records}


@dataclass
class EvalReport:
    """What :func:`lavinkit.evaluation.evaluate` returns.

    Attributes:
        settings: model files, sampler, sizes, seeds, tasks and partners: what makes the run reproducible.
        tasks: ``{task: TaskReport}`` in evaluation order.
        grid: one :class:`GridRow` per task (not part of the JSON).
    """

    settings: dict[str, Any]
    tasks: dict[str, TaskReport]
    grid: list[GridRow] = field(default_factory=list, repr=False)

    # ---------------------------------------------------------------------------------------------- numbers
    def rows(self) -> dict[str, dict[str, Any]]:
        """``{task: table row}`` (means per task)."""
        return {name: task.row() for name, task in self.tasks.items()}

    def summary_numbers(self) -> dict[str, Any]:
        """Tasks where the prediction beats the identity baseline (>= 0 dB, >= 3 dB) and the mean swap shift."""
        gains = [t.means.get("beats_identity_db") for t in self.tasks.values()]
        gains = [g for g in gains if g is not None]
        shifts = [t.means.get("swap_shift_db") for t in self.tasks.values()]
        shifts = [s for s in shifts if s is not None and math.isfinite(s)]
        return {
            "tasks": len(self.tasks),
            "beats_identity": sum(g >= 0 for g in gains),
            "beats_identity_by_3db": sum(g >= 3 for g in gains),
            "mean_swap_shift_db": sum(shifts) / len(shifts) if shifts else None,
            "swap_shift_tasks": len(shifts),
        }

    def summary(self) -> str:
        """One line, e.g. ``prediction beats identity on 4/6 tasks (>= 0 dB), 2/6 by >= 3 dB; mean swap shift
        +1.2 dB (over 5 tasks)``."""
        s = self.summary_numbers()
        n = s["tasks"]
        line = (f"prediction beats identity on {s['beats_identity']}/{n} tasks (>= 0 dB), "
                f"{s['beats_identity_by_3db']}/{n} by >= 3 dB; ")
        if s["mean_swap_shift_db"] is None:
            return line + "no swap shift (no task has a swap partner with a reference answer)"
        return line + (f"mean swap shift {s['mean_swap_shift_db']:+.1f} dB "
                       f"(over {s['swap_shift_tasks']} task{'s' if s['swap_shift_tasks'] != 1 else ''})")

    # ---------------------------------------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """Settings, per task (means and every per-query record) and the summary; JSON-safe (NaN/inf -> null)."""
        return _plain({"settings": self.settings, "tasks": {n: t.to_dict() for n, t in self.tasks.items()},
                       "summary": {**self.summary_numbers(), "text": self.summary()}})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"

    def to_text(self) -> str:
        """Fixed-width per-task table and the summary line."""
        return format_task_table(self.rows(), markdown=False, keys=TABLE_KEYS) + "\n\n" + self.summary()

    def to_markdown(self) -> str:
        """Markdown: the per-task table, the summary and the main settings."""
        s = self.settings
        lines = ["# lavinkit eval", "", format_task_table(self.rows(), markdown=True, keys=TABLE_KEYS), "",
                 self.summary(), "",
                 f"J-DiT `{s.get('dit')}`, ST-VAE `{s.get('vae')}`; {s.get('num_pairs')} example pairs, "
                 f"{s.get('queries_per_task')} queries per task, seeds {s.get('seeds')}, size "
                 f"{'x'.join(map(str, s.get('size', [])))}, {s.get('steps')} steps, guidance "
                 f"{s.get('guidance_scale')}, encode mode {s.get('encode_mode')}"
                 + (f", {s['ensemble_size']} answers averaged per query" if s.get("ensemble_size", 1) > 1 else "")
                 + (", the query's ST-VAE residual transferred" if s.get("residual_transfer") else "")
                 + ".",
                 "",
                 "Identity: the query returned unchanged. Ceiling: the ST-VAE reconstruction of the target. Swapped: "
                 "the prediction with a partner task's example pairs; swap shift = PSNR(swapped, partner reference) - "
                 "PSNR(prediction, partner reference)."]
        return "\n".join(lines) + "\n"

    def grid_png(self) -> bytes:
        """``eval_grid.png``: one row per task (first query, first seed), labelled columns."""
        from PIL import Image, ImageDraw
        from torchvision.utils import make_grid

        from lavinkit.data import media

        if not self.grid:
            raise ValueError("the report holds no grid rows")
        shape = next(t.shape for row in self.grid for t in row.tiles if t is not None)
        cols = max(len(row.tiles) for row in self.grid)
        blank = torch.full(shape, 0.5)
        tiles = [t if t is not None else blank
                 for row in self.grid for t in row.tiles + [None] * (cols - len(row.tiles))]
        scale = max(1, -(-96 // shape[-1]))  # small images are enlarged so that the labels fit above them
        grid = make_grid(torch.stack(tiles), nrow=cols, padding=2, pad_value=1.0)  # [3, H', W']
        if scale > 1:
            grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        head, left = 16, 170
        canvas = Image.new("RGB", (pixels.shape[1] + left, pixels.shape[0] + head), (0, 0, 0))
        canvas.paste(Image.fromarray(pixels), (left, head))
        draw = ImageDraw.Draw(canvas)
        k = (cols - 5) // 2  # query, k pairs, prediction, target, identity, swapped
        labels = ["query"] + [f"{w} {i + 1}" for i in range(k) for w in ("in", "out")]
        labels += ["prediction", "target", "identity", "swapped"]
        step = (shape[-1] + 2) * scale
        for i, label in enumerate(labels):
            draw.text((left + i * step + 2 * scale + 2, 2), label, fill=(255, 255, 255))
        row_h = (shape[-2] + 2) * scale
        for j, row in enumerate(self.grid):
            y = head + j * row_h + row_h // 2 - 12
            draw.text((4, y), row.task[:28], fill=(255, 255, 255))
            draw.text((4, y + 14), f"swap: {row.partner[:22]}" if row.partner else "swap: -", fill=(180, 180, 180))
        return media.encode_image(np.asarray(canvas), "png")

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``eval.json``, ``eval.md`` and ``eval_grid.png`` into ``out``; returns their paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "eval.json", "markdown": out / "eval.md", "grid": out / "eval_grid.png"}
        paths["json"].write_text(self.to_json())
        paths["markdown"].write_text(self.to_markdown())
        if self.grid:
            paths["grid"].write_bytes(self.grid_png())
        else:
            del paths["grid"]
        return paths
