"""``lavinkit bench data``: in-context batches/s and pairs/s over image and clip shards, vs plain reading.

For every shard set and worker count it times, in the same run and over the same shards:

* ``grouped``: the training stream of the DataModules (:class:`lavinkit.data.pipeline.PairStream`:
  resampled shards, shuffle, task grouping into k+1 pairs, decode, collate to the batch contract);
* ``plain``: the same reading without grouping (same resampled shards, tar reader, shuffle, checks,
  decoder and collation), ``B x (k+1)`` pairs per batch.

Both decode the same number of pairs per batch; ``overhead = plain pairs/s / grouped pairs/s - 1``.
The grouping step alone is also timed on pre-read pairs (``group us/pair``; ``group share`` = that time
as a fraction of a plain pair's CPU time): on a noisy machine it is the precise figure for the cost of
grouping, while the end-to-end overhead carries the run-to-run noise.
Numbers are medians, with their spread (10th to 90th percentile), over ``--repeats`` runs (default 7) of at
least ``--batches`` batches and ``--min-seconds`` seconds each (default 1 s), after 3 warm-up batches
(worker start-up is not timed), per wall-clock second and per CPU second of the main process plus
its workers (the second is the figure to compare on a machine shared with other jobs). Without ``--images``/``--clips`` a demo set (64x64 png pairs,
17-frame 64x64 mp4 clips) is built in a temporary folder with :func:`lavinkit.data.demo.build_demo`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lavinkit.bench.stats import spread


class _PlainStream(torch.utils.data.IterableDataset):
    """The grouped stream's reading without grouping: the same shard draws and shuffle (same derived
    seeds as :class:`~lavinkit.data.pipeline.PairStream` for epoch 0, rank 0), reader, checks, decoder
    and collation; ``pairs_per_batch`` pairs per batch (``[P, 1, 3, T, H, W]``)."""

    def __init__(self, urls: list[str], *, modality: str, pairs_per_batch: int, seed: int, shuffle: int):
        super().__init__()
        self.urls, self.modality, self.ppb, self.seed, self.shuffle = (
            urls,
            modality,
            pairs_per_batch,
            seed,
            shuffle,
        )

    def __iter__(self):
        import webdataset as wds

        from lavinkit.data.pipeline import (
            PixelDecoder,
            SkipLog,
            checked_pairs,
            collate_examples,
            derive_rng,
            derive_seed,
            raw_samples,
        )

        info = torch.utils.data.get_worker_info()
        parts = (self.seed, self.modality, 0, 0, info.id if info is not None else 0)
        log, decode = SkipLog(), PixelDecoder(self.modality)
        shards = wds.ResampledShards(
            self.urls, seed=derive_seed("shards", *parts), deterministic=True, worker_seed=lambda: 0
        )
        stream = wds.shuffle(self.shuffle, min(100, self.shuffle), rng=derive_rng("shuffle", *parts))(
            raw_samples(shards, log)
        )
        pairs = checked_pairs(stream, log)
        while True:
            chosen = [next(pairs) for _ in range(self.ppb)]
            yield collate_examples([[p] for p in chosen], [[decode(p)] for p in chosen], latents=False)


def _grouped_stream(urls: list[str], *, modality: str, batch_size: int, k: int, seed: int, shuffle: int):
    from lavinkit.data.pipeline import PairStream, PixelDecoder, Source

    src = Source(modality, urls, PixelDecoder(modality), batch_size)
    return PairStream(
        [src], train=True, num_context=(k, k), seed=seed, num_batches=10**9, shuffle_buffer=shuffle
    )


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes ``pids`` (Linux ``/proc``; 0 where unreadable)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _time(
    dataset, workers: int, batches: int, pairs_per_batch: int, video: bool, min_seconds: float = 0.0
) -> tuple[float, float]:
    """``(pairs per wall second, pairs per CPU second)`` over at least ``batches`` batches and ``min_seconds``
    seconds, after 3 warm-up batches (the streams are endless).

    CPU seconds add the main process and the loader's workers: on a shared machine the wall-clock rate
    follows the load of other processes, the CPU rate much less.
    """
    import os

    from lavinkit.data.pipeline import worker_init, worker_start_method

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        multiprocessing_context=worker_start_method(workers, decodes_video=video),
    )
    it = iter(loader)
    for _ in range(3):
        next(it)
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    cpu0, start = _cpu_seconds(pids), time.perf_counter()
    done = 0
    while done < batches or time.perf_counter() - start < min_seconds:
        batch = next(it)
        n = batch["input"].shape[0] * (batch["input"].shape[1] if batch["input"].ndim == 6 else 1)
        assert n == pairs_per_batch, (n, pairs_per_batch)
        done += 1
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds(pids) - cpu0
    del it
    pairs = done * pairs_per_batch
    # /proc counts CPU time in clock ticks (10 ms): too short a run has no CPU figure
    return pairs / elapsed, (pairs / cpu if cpu >= 0.05 else float("nan"))


def grouping_cost_us(urls: list[str], *, k: int, max_pairs: int = 4000) -> float:
    """Microseconds per pair spent in :class:`~lavinkit.data.incontext.TaskGrouper` alone (pairs read
    and checked beforehand, nothing decoded): the part of the grouped stream that plain reading lacks."""
    from itertools import islice

    from lavinkit.data.incontext import TaskGrouper
    from lavinkit.data.pipeline import SkipLog, checked_pairs, raw_samples

    pairs = list(
        islice(checked_pairs(raw_samples(({"url": u} for u in urls), SkipLog()), SkipLog()), max_pairs)
    )
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        grouper = TaskGrouper(iter(pairs))
        while grouper.next_example(k + 1) is not None:
            pass
        best = min(best, time.perf_counter() - start)
    return best / max(1, len(pairs)) * 1e6


def run(
    images: str | None = None,
    clips: str | None = None,
    workers: list[int] | None = None,
    image_batch_size: int = 32,
    clip_batch_size: int = 4,
    num_context: int = 2,
    batches: int = 20,
    clip_batches: int = 10,
    repeats: int = 7,
    min_seconds: float = 1.0,
    seed: int = 0,
    shuffle: int = 1000,
    demo_dir: str | None = None,
) -> list[dict]:
    """Run the benchmark; returns one row per (kind, workers) with medians (see the module docstring)."""
    from lavinkit.data.pipeline import resolve_urls

    workers = [0, 1, 2] if workers is None else workers
    tmp = None
    if images is None and clips is None:
        from lavinkit.data.demo import build_demo

        root = Path(demo_dir) if demo_dir else Path(tmp := tempfile.mkdtemp(prefix="lavinkit-bench-"))
        if not (root / "train").is_dir():
            print(f"# building the demo set in {root} ...", file=sys.stderr)
            build_demo(
                root,
                image_size=64,
                clip_frames=17,
                image_pairs_per_task=150,
                clip_pairs_per_task=24,
                seed=seed,
            )
        images, clips = str(root / "train" / "images-*.tar"), str(root / "train" / "videos-*.tar")
    torch.set_num_threads(1)
    rows = []
    kinds = [("image", images, image_batch_size, batches), ("video", clips, clip_batch_size, clip_batches)]
    for modality, urls, bs, n_batches in kinds:
        if urls is None:
            continue
        shard_urls = resolve_urls(urls, what=f"--{'images' if modality == 'image' else 'clips'}")
        ppb = bs * (num_context + 1)
        group_us = grouping_cost_us(shard_urls, k=num_context)
        for w in workers:
            grouped, plain = [], []
            for r in range(repeats):
                stream = _grouped_stream(
                    shard_urls,
                    modality=modality,
                    batch_size=bs,
                    k=num_context,
                    seed=seed + r,
                    shuffle=shuffle,
                )
                plain_stream = _PlainStream(
                    shard_urls, modality=modality, pairs_per_batch=ppb, seed=seed + r, shuffle=shuffle
                )
                # alternate which one runs first: no systematic order effect in the medians
                for name in ("grouped", "plain") if r % 2 == 0 else ("plain", "grouped"):
                    if name == "grouped":
                        grouped.append(_time(stream, w, n_batches, ppb, modality == "video", min_seconds))
                    else:
                        plain.append(_time(plain_stream, w, n_batches, ppb, modality == "video", min_seconds))
            gs, ps = spread([x for x, _ in grouped]), spread([x for x, _ in plain])
            g, p = gs["median"], ps["median"]
            gc, pc = statistics.median(x for _, x in grouped), statistics.median(x for _, x in plain)
            row = {
                "kind": modality,
                "workers": w,
                "batch": f"{bs}x{num_context + 1}",
                "grouped_batches_s": g / ppb,
                "grouped_pairs_s": g,
                "grouped_pairs_s_p10": gs["p10"],
                "grouped_pairs_s_p90": gs["p90"],
                "plain_pairs_s": p,
                "plain_pairs_s_p10": ps["p10"],
                "plain_pairs_s_p90": ps["p90"],
                "repeats": repeats,
                "grouped_pairs_s_all": [x for x, _ in grouped],
                "plain_pairs_s_all": [x for x, _ in plain],
                "overhead": p / g - 1.0,
                "grouped_pairs_cpu_s": gc,
                "plain_pairs_cpu_s": pc,
                "overhead_cpu": pc / gc - 1.0,
                "grouping_us_per_pair": group_us,
                "grouping_share": group_us * 1e-6 * pc,
            }
            rows.append(row)
            print(format_rows([row], header=not rows[:-1]), file=sys.stderr, flush=True)
    if tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def format_rows(rows: list[dict], header: bool = True) -> str:
    """A text table: wall-clock rates (median, p10-p90 over the repeats), then the medians per CPU second (main
    process + workers)."""
    head = (
        f"{'kind':<6} {'workers':>7} {'batch BxN':>10} {'batches/s':>10} {'pairs/s':>9} {'p10-p90':>11} "
        f"{'plain pairs/s':>14} {'p10-p90':>11} "
        f"{'overhead':>9} {'pairs/cpu-s':>12} {'plain/cpu-s':>12} {'overhead':>9} {'group us/pair':>14} "
        f"{'group share':>12}"
    )
    lines = [head, "-" * len(head)] if header else []
    for r in rows:
        lines.append(
            f"{r['kind']:<6} {r['workers']:>7} {r['batch']:>10} {r['grouped_batches_s']:>10.1f} "
            f"{r['grouped_pairs_s']:>9.0f} {r['grouped_pairs_s_p10']:>5.0f}-{r['grouped_pairs_s_p90']:<5.0f} "
            f"{r['plain_pairs_s']:>14.0f} {r['plain_pairs_s_p10']:>5.0f}-{r['plain_pairs_s_p90']:<5.0f} "
            f"{r['overhead']:>+9.1%} "
            f"{r['grouped_pairs_cpu_s']:>12.0f} {r['plain_pairs_cpu_s']:>12.0f} {r['overhead_cpu']:>+9.1%} "
            f"{r['grouping_us_per_pair']:>14.2f} {r['grouping_share']:>12.2%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lavinkit bench data", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=str | None, default=None, help="image pair shards (url, dir or glob)"
    )
    parser.add_argument("--clips", type=str | None, default=None, help="clip pair shards (url, dir or glob)")
    parser.add_argument("--workers", type=list[int], default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--image-batch-size", "--image_batch_size", type=int, default=32,
                        help="in-context examples per image batch")
    parser.add_argument("--clip-batch-size", "--clip_batch_size", type=int, default=4, help="in-context examples per clip batch")
    parser.add_argument("--num-context", "--num_context", type=int, default=2, help="k context pairs (N = k + 1 per example)")
    parser.add_argument("--batches", type=int, default=20, help="timed image batches per repeat")
    parser.add_argument("--clip-batches", "--clip_batches", type=int, default=10, help="timed clip batches per repeat")
    parser.add_argument("--repeats", type=int, default=7, help="repeats (median and p10-p90 reported)")
    parser.add_argument("--min-seconds", "--min_seconds", type=float, default=1.0,
                        help="each repeat reads batches for at least this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffle", type=int, default=1000, help="sample shuffle buffer")
    parser.add_argument("--demo-dir", "--demo_dir", type=str | None, default=None, help="build/reuse the demo set here")
    parser.add_argument("--json", type=str | None, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items() if k not in ("json", "__default_config__")}
    rows = run(**kwargs)
    print(format_rows(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
