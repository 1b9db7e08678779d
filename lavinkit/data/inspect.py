"""``lavinkit data inspect``: per-task counts and a contact sheet of a few pairs per task.

The sheet has one row per task, labelled ``task (modality, count)``; each pair shows the input and the
target side by side (``input | target``). Clips show ``frames`` evenly spaced frames of the input,
then the same frames of the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lavinkit.data.schema import SampleError, check_raw, decode_pair
from lavinkit.data.shards import resolve_urls
from lavinkit.data.validate import read_shard


@dataclass
class TaskSummary:
    """Counts and shapes of one task over the inspected shards."""

    task: str
    count: int = 0
    modalities: set = field(default_factory=set)
    frames: set = field(default_factory=set)
    sizes: set = field(default_factory=set)
    examples: list = field(default_factory=list)  # decoded pairs kept for the sheet


@dataclass
class Inspection:
    summaries: dict[str, TaskSummary]
    errors: list[str]
    samples: int

    def table(self) -> str:
        """A plain-text table: task, modality, pairs, frames, H x W."""
        rows = [("task", "modality", "pairs", "frames", "size")]
        for s in self.summaries.values():
            rows.append((s.task, "/".join(sorted(s.modalities)), str(s.count), ",".join(map(str, sorted(s.frames))),
                         ",".join(f"{h}x{w}" for h, w in sorted(s.sizes))))
        rows.append(("total", "", str(self.samples), "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(-1, "-" * len(lines[0]))
        return "\n".join(lines)


def inspect_shards(urls: str | Sequence[str], *, pairs_per_task: int = 4) -> Inspection:
    """Count pairs per task and keep the first ``pairs_per_task`` decodable pairs of each task.

    Only the kept pairs are decoded; the rest are counted from their json. Latent pairs (``lavinkit encode``)
    are counted from their json and not drawn (``modality`` reads ``"image latents"``). Unreadable samples or
    shards (missing ones too) are listed in ``errors`` (use ``lavinkit data validate`` for a full check).
    """
    summaries: dict[str, TaskSummary] = {}
    errors: list[str] = []
    samples = 0
    for url in resolve_urls(urls, what="inspect", must_exist=False):
        for sample, problem in read_shard(url):
            if problem is not None:
                errors.append(str(problem))
                continue
            try:
                meta = check_raw(sample).meta
            except SampleError as err:
                errors.append(str(err))
                continue
            task = meta["task"]
            samples += 1
            s = summaries.setdefault(task, TaskSummary(task))
            s.count += 1
            if meta.get("latents") is True:
                # latent pairs (lavinkit encode): counted with the pixel shape their json records, not drawn
                s.modalities.add(f"{meta.get('modality', 'unknown')} latents")
                if all(isinstance(meta.get(k), int) for k in ("frames", "height", "width")):
                    s.frames.add(meta["frames"])
                    s.sizes.add((meta["height"], meta["width"]))
                continue
            if len(s.examples) < pairs_per_task or "frames" not in meta:
                try:
                    pair = decode_pair(sample, check_shape=False)
                except SampleError as err:
                    errors.append(str(err))
                    continue
                meta = {**meta, "frames": pair["input"].shape[1], "height": pair["input"].shape[2],
                        "width": pair["input"].shape[3]}
                if len(s.examples) < pairs_per_task:
                    s.examples.append(pair)
            s.modalities.add(meta.get("modality", "image" if meta["frames"] == 1 else "video"))
            s.frames.add(int(meta["frames"]))
            s.sizes.add((int(meta["height"]), int(meta["width"])))
    return Inspection(dict(sorted(summaries.items())), errors, samples)


def _frames_hwc(x, indices) -> list[np.ndarray]:
    """uint8 [3, T, H, W] tensor -> the frames at ``indices`` as [H, W, 3] arrays."""
    return [x[:, i].permute(1, 2, 0).numpy() for i in indices]


def contact_sheet(inspection: Inspection, out: str | Path, *, frames: int = 3, cell: int = 64) -> Path:
    """Draw the kept pairs of every task into a PNG; returns its path.

    Args:
        inspection: from :func:`inspect_shards`.
        out: PNG path.
        frames: frames shown per clip (evenly spaced, first and last included).
        cell: frames smaller than this are upscaled (nearest) by an integer factor to at least ``cell``.
    """
    from PIL import Image, ImageDraw

    label_h, pad, gap, split_gap, bar = 14, 6, 14, 2, 4
    rows = []
    for s in inspection.summaries.values():
        tiles = []
        for pair in s.examples:
            t = pair["input"].shape[1]
            idx = [0] if t == 1 else sorted({round(i * (t - 1) / max(1, frames - 1)) for i in range(frames)})
            inp, tgt = _frames_hwc(pair["input"], idx), _frames_hwc(pair["target"], idx)
            h, w = inp[0].shape[:2]
            k = max(1, -(-cell // max(h, w)))
            fw, n = w * k, len(idx)
            # input frames, a white bar, target frames: [fw][2][fw]...[4 white][fw][2][fw]...
            strip = Image.new("RGB", (2 * n * fw + 2 * (n - 1) * split_gap + bar, h * k), (40, 40, 40))
            for j, f in enumerate(inp + tgt):
                x = j * (fw + split_gap) + (bar - split_gap if j >= n else 0)
                strip.paste(Image.fromarray(f).resize((fw, h * k), Image.NEAREST), (x, 0))
            bar_x = n * (fw + split_gap) - split_gap
            strip.paste((255, 255, 255), (bar_x, 0, bar_x + bar, h * k))
            tiles.append(strip)
        rows.append((f"{s.task} ({'/'.join(sorted(s.modalities))}, {s.count} pairs)   input | target", tiles))
    width = max([pad * 2 + sum(t.width for t in tiles) + gap * max(0, len(tiles) - 1) for _, tiles in rows] + [320])
    height = pad + sum(label_h + max([t.height for t in tiles] + [0]) + pad for _, tiles in rows)
    sheet = Image.new("RGB", (width, max(height, 40)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for label, tiles in rows:
        draw.text((pad, y), label, fill=(255, 255, 255))
        y += label_h
        x = pad
        for t in tiles:
            sheet.paste(t, (x, y))
            x += t.width + gap
        y += max([t.height for t in tiles] + [0]) + pad
    if not rows:
        draw.text((pad, pad), "no readable pairs", fill=(255, 255, 255))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
