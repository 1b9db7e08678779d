"""WebDataset stages for pair shards: checks, decoding, collation, the in-context stream (url resolution and
the tar reader live in :mod:`lavinkit.data.shards`).

The stages here know nothing about Lightning; :mod:`lavinkit.data.datamodule` assembles them.

Error policy (one corrupt sample must never kill a run, many must stop it clearly):

* A corrupt or truncated tar is counted once by the reader (:func:`lavinkit.data.shards.raw_samples`),
  which keeps the samples before the damage and goes on with the next shard.
* A problem that can be seen WITHOUT decoding pixels (bad key, missing, duplicate, empty or non-adjacent
  member, json without ``"task"``) costs only its sample: :func:`check_raw` rejects it, it is counted in a
  :class:`SkipLog` and the rest of the shard is read.
* A problem seen while decoding (undecodable png/mp4/npy, wrong frame count, size mismatch, NaN/Inf
  latents) drops the in-context example it belongs to; the bad pair is counted the same way.
* Counts travel to the main process with every batch (:data:`SKIP_FIELD`, removed before the batch
  reaches the user) and the loader stops the run with :class:`DataStreamError` naming the last bad
  shard and key once ``max_skipped`` is exceeded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lavinkit.data.incontext import TaskGrouper, draw_num_context
from lavinkit.data.media import decode_media
from lavinkit.data.schema import (
    DataStreamError,
    RawPair,
    SampleError,
    check_raw,
    decode_latent,
    latent_problems,
    shape_problems,
)
from lavinkit.data.shards import SkipLog, raw_samples, resolve_urls  # noqa: F401 - resolve_urls: re-exported
from lavinkit.seeding import derive_rng, derive_seed  # noqa: F401 - re-exported

SKIP_FIELD = "__lavinkit_skipped__"
ERROR_FIELD = "__lavinkit_error__"


def skip_summary(log: SkipLog) -> str:
    """``"; 2 bad samples skipped, last: shard X, key 'k': reason"`` for error messages ("" when none)."""
    if not log.count:
        return ""
    url, key, reason = log.last
    return f"; {log.count} bad sample(s) skipped, last: shard {url}, key {key!r}: {reason}"


def checked_pairs(samples: Iterable[dict], log: SkipLog) -> Iterator[RawPair]:
    """Raw samples -> :class:`RawPair`; samples failing :func:`check_raw` are counted and skipped."""
    for sample in samples:
        try:
            yield check_raw(sample)
        except SampleError as err:
            log.add(err.url, err.key, err.reason)


# --------------------------------------------------------------------------------------------- decode


def _resize_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[3, T, H, W]`` -> uint8 ``[3, T, h, w]``: resize the short side (antialiased), center-crop."""
    _, _, h, w = x.shape
    th, tw = size
    if (h, w) == (th, tw):
        return x
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    y = x.permute(1, 0, 2, 3).float()  # [T, 3, H, W]
    if (nh, nw) != (h, w):
        y = F.interpolate(y, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    y = y[:, :, top : top + th, left : left + tw]
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()


@dataclass
class PixelDecoder:
    """Decodes a :class:`RawPair` to uint8 ``[3, T, H, W]`` input/target with the stream's shape policy.

    Args:
        modality: ``"image"`` (T must be 1) or ``"video"`` (T = 1 + 4k after trimming).
        size: ``(H, W)`` to resize (short side) and center-crop to, multiples of 16; ``None`` keeps
            the stored size (then it must already be a multiple of 16).
        frames: clips keep their first ``frames`` frames (must be 1 + 4k); shorter clips are bad samples.
    """

    modality: str = "image"
    size: tuple[int, int] | None = None
    frames: int | None = None

    def __call__(self, pair: RawPair) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = []
        for name in pair.members:
            ext = name.split(".", 1)[1].lower() if "." in name else ""
            try:
                tensors.append(decode_media(bytes(pair.sample[name]), ext))
            except Exception as err:  # noqa: BLE001 - decoders raise many types; all mean "undecodable"
                raise SampleError(f"{name}: {err}", url=pair.url, key=pair.key, kind="undecodable") from err
        inp, tgt = tensors
        t = inp.shape[1]
        if self.modality == "image" and t != 1:
            raise SampleError(
                f"expected an image, got a clip of {t} frames", url=pair.url, key=pair.key, kind="frames"
            )
        if self.modality == "video":
            if self.frames is not None:
                if t < self.frames:
                    raise SampleError(
                        f"clip has {t} frames, the stream needs {self.frames}",
                        url=pair.url,
                        key=pair.key,
                        kind="frames",
                    )
                inp, tgt = inp[:, : self.frames], tgt[:, : self.frames]
        if self.size is not None and inp.shape == tgt.shape:
            inp, tgt = _resize_crop(inp, self.size), _resize_crop(tgt, self.size)
        problems = shape_problems(inp, tgt, check_shape=True)
        if problems:
            raise SampleError(
                "; ".join(m for _, m in problems), url=pair.url, key=pair.key, kind=problems[0][0]
            )
        return inp, tgt


@dataclass
class LatentDecoder:
    """Decodes a latent pair (``input.npy`` / ``target.npy`` float16 ``[C, t, h, w]``) to float32 tensors.

    ``(z - shift) * scale`` is applied (defaults leave stored latents unchanged: shards written by
    ``lavinkit encode`` hold normalised latents). ``vae``: if set, the json's ``"vae"`` entry (or its
    ``"name"``) must equal it; a mismatch stops the run (mixing latent spaces is a config error).
    """

    shift: float = 0.0
    scale: float = 1.0
    vae: str | None = None
    modality: str = "latent"

    def __call__(self, pair: RawPair) -> tuple[torch.Tensor, torch.Tensor]:
        if self.vae is not None:
            rec = pair.meta.get("vae")
            name = rec.get("name", rec.get("path")) if isinstance(rec, dict) else rec
            if str(name) != self.vae:
                raise DataStreamError(
                    f"shard {pair.url}, key {pair.key!r}: latents made by VAE {name!r}, the stream expects {self.vae!r}"
                )
        inp, tgt = (decode_latent(pair.sample, name, pair.url, pair.key) for name in pair.members)
        # json fields that disagree (meta-mismatch) are for validate; wrong shapes and NaN/Inf cannot be trained on
        problems = [(k, m) for k, m in latent_problems(inp, tgt, pair.meta) if k != "meta-mismatch"]
        if problems:
            raise SampleError("; ".join(m for _, m in problems), url=pair.url, key=pair.key, kind=problems[0][0])
        if self.shift != 0.0 or self.scale != 1.0:
            inp, tgt = (inp - self.shift) * self.scale, (tgt - self.shift) * self.scale
        return inp, tgt


# --------------------------------------------------------------------------------------------- collate


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float32 tensor; in a DataLoader worker it lives in shared memory, so sending the batch to
    the main process does not copy it again (as ``default_collate`` does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0, dtype=torch.float32).set_(storage).view(shape)


def collate_examples(
    examples: list[list[RawPair]], decoded: list[list[tuple[torch.Tensor, torch.Tensor]]], *, latents: bool
) -> dict:
    """Stack decoded examples into the batch contract.

    Args:
        examples: B examples of N raw pairs each (query last).
        decoded: the matching ``(input, target)`` tensors; uint8 ``[3, T, H, W]`` (pixels) or float32
            ``[C, t, h, w]`` (latents), all of one shape.

    Returns:
        ``{"input": float32 [B, N, C, T, H, W], "target": same, "task": list[str] (B),
        "keys": list[list[str]] (B x N), "num_context": N - 1}``; pixels are mapped to [-1, 1];
        latent batches also carry ``"latents": True``.
    """
    b, n = len(decoded), len(decoded[0])
    shape = (b, n, *decoded[0][0][0].shape)
    inp, tgt = _batch_tensor(shape), _batch_tensor(shape)
    for i, ex in enumerate(decoded):
        for j, (x, y) in enumerate(ex):
            inp[i, j] = x  # uint8 -> float32 in the copy
            tgt[i, j] = y
    if not latents:
        # [0, 255] -> [-1, 1] in one vectorised op per tensor
        inp.div_(127.5).sub_(1.0)
        tgt.div_(127.5).sub_(1.0)
    batch = {
        "input": inp,
        "target": tgt,
        "task": [ex[0].task for ex in examples],
        "keys": [[p.key for p in ex] for ex in examples],
        "num_context": n - 1,
    }
    if latents:
        batch["latents"] = True
    return batch


# --------------------------------------------------------------------------------------------- stream


@dataclass
class Source:
    """One shard set of the stream: a modality with its decoder and batch size.

    ``weight`` is the probability weight of drawing this source for a training batch (mixtures).
    """

    name: str
    urls: list[str]
    decoder: PixelDecoder | LatentDecoder
    batch_size: int
    weight: float = 1.0


def _worker_split() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _guarded_shards(shards: Iterable[dict], state: dict, limit: int, urls: Sequence[str]) -> Iterator[dict]:
    """Pass shard dicts through; stop an endless stream of shards that yield no sample at all."""
    for shard in shards:
        state["shards"] += 1
        if state["shards"] > limit:
            raise DataStreamError(
                f"no readable sample in the last {limit} shards drawn from {len(urls)} urls "
                f"(first: {urls[0]!r}); the shards are empty or all corrupt"
            )
        yield shard


class PairStream(torch.utils.data.IterableDataset):
    """In-context batches from pair shards, deterministic per (seed, epoch, rank, worker).

    Training (``train=True``): every DataLoader worker plays a *role* ``rho`` and produces the
    global batches ``j = rho, rho + W, rho + 2W, ...`` of its rank's epoch (W = number of workers), which
    is exactly the order in which ``DataLoader`` interleaves workers. The role's shards are resampled
    (``wds.ResampledShards(deterministic=True)``) and shuffled with seeds derived from
    ``(seed, source, epoch, rank, role)``; k and the source of batch j are drawn from
    ``(seed, epoch, rank, j)``. ``num_batches`` batches per rank per epoch, so every rank runs the same
    number of steps whatever the shard count.

    Resume: ``skip = c`` makes the stream start at global batch c: worker w plays role ``(c + w) % W``
    and regroups (without decoding pixels) the role's batches before c, then yields the rest.

    Validation (``train=False``): no resampling, no shuffling, fixed k. The (rank, worker) unit
    ``g = rank * W + w`` of ``G = world_size * W`` reads shards ``g::G`` (sorted urls) or, with fewer
    shards than G, every shard keeping samples ``i % G == g``. Each unit yields exactly
    ``quotas[source][w]`` batches (the same on all ranks), repeating its data if it runs short.

    Yields:
        the batch dict of :func:`collate_examples` (+ private skip/err fields removed by the loader).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        train: bool,
        num_context: tuple[int, int],
        seed: int = 0,
        num_batches: int | None = None,
        quotas: dict[str, list[int]] | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        task_weights: dict[str, float] | None = None,
        max_skipped: int | None = 100,
        starve_limit: int = 64,
    ):
        super().__init__()
        if train and (num_batches is None or num_batches < 1):
            raise ValueError(f"a training stream needs num_batches >= 1 (steps per epoch), got {num_batches}")
        if not train and quotas is None:
            raise ValueError("a validation stream needs per-worker quotas")
        self.sources = list(sources)
        self.train = train
        self.num_context = num_context
        self.seed = seed
        self.num_batches = num_batches
        self.quotas = quotas
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.task_weights = task_weights
        self.max_skipped = max_skipped
        self.starve_limit = starve_limit
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        if self.train:
            return int(self.num_batches)
        return int(sum(sum(q) for q in self.quotas.values()))

    # ---- sources

    def _train_grouper(self, src: Source, role: int, log: SkipLog) -> Any:
        import webdataset as wds

        parts = (self.seed, src.name, self.epoch, self.rank, role)
        shards = wds.ResampledShards(
            src.urls, seed=derive_seed("shards", *parts), deterministic=True, worker_seed=lambda: 0
        )
        guard = {"shards": 0}
        limit = 10 * len(src.urls) + 100
        raw = raw_samples(_guarded_shards(shards, guard, limit, src.urls), log)

        def reset_guard(samples):
            for s in samples:
                guard["shards"] = 0
                yield s

        stream = reset_guard(raw)
        if self.shuffle_buffer > 1:
            stream = wds.shuffle(
                self.shuffle_buffer, min(100, self.shuffle_buffer), rng=derive_rng("shuffle", *parts)
            )(stream)
        return TaskGrouper(
            checked_pairs(stream, log),
            starve_limit=self.starve_limit,
            task_weights=self.task_weights,
            rng=derive_rng("thin", *parts),
        )

    def _val_pass(self, src: Source, unit: int, units: int, log: SkipLog) -> Iterator[RawPair]:
        """One finite, ordered pass over the unit's share of ``src``."""
        if len(src.urls) >= units:
            urls, modulo = src.urls[unit::units], False
        else:
            urls, modulo = src.urls, True
        samples = raw_samples(({"url": u} for u in urls), log)
        if modulo:
            samples = (s for i, s in enumerate(samples) if i % units == unit)
        yield from checked_pairs(samples, log)

    def _val_grouper(self, src: Source, unit: int, units: int, log: SkipLog, *, cycle: bool) -> Any:
        def passes():
            while True:
                produced = False
                for pair in self._val_pass(src, unit, units, log):
                    produced = True
                    yield pair
                if not produced:
                    raise DataStreamError(
                        f"validation source {src.name!r}: no readable sample for rank {self.rank} "
                        f"(unit {unit} of {units}) in {len(src.urls)} shards (first: {src.urls[0]!r})"
                        + skip_summary(log)
                    )
                if not cycle:
                    return

        return TaskGrouper(
            passes(),
            starve_limit=self.starve_limit,
            task_weights=self.task_weights,
            rng=derive_rng("thin-val", self.seed, src.name, unit),
        )

    def count_val_batches(self, src: Source, unit: int, units: int, log: SkipLog | None = None) -> int:
        """Full batches one validation unit forms in one pass (grouping only, nothing decoded); the samples
        skipped on the way are counted in ``log`` (for an error that names them)."""
        grouper = self._val_grouper(src, unit, units, SkipLog() if log is None else log, cycle=False)
        n, examples = self.num_context[1] + 1, 0
        while grouper.next_example(n) is not None:
            examples += 1
        return examples // src.batch_size

    # ---- batches

    def _make_batch(self, grouper: Any, src: Source, n: int, log: SkipLog, *, decode: bool) -> dict | None:
        examples: list[list[RawPair]] = []
        decoded: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        shape = None
        while len(examples) < src.batch_size:
            ex = grouper.next_example(n)
            if ex is None:
                raise DataStreamError(
                    f"source {src.name!r} ran out of in-context examples of {n} pairs; "
                    f"task buffers hold {grouper.pending()} (every task needs at least {n} pairs)" + skip_summary(log)
                )
            if not decode:
                examples.append(ex)
                continue
            try:
                dec = [src.decoder(p) for p in ex]
            except SampleError as err:
                log.add(err.url, err.key, err.reason)
                self._check_limit(log)
                continue
            ex_shape = dec[0][0].shape
            bad = next((i for i, (x, _) in enumerate(dec) if x.shape != ex_shape), None)
            if shape is not None and ex_shape != shape:
                bad = 0
            if bad is not None:
                p = ex[bad]
                log.add(
                    p.url,
                    p.key,
                    f"shape {list(dec[bad][0].shape)} differs from the batch's "
                    f"{list(shape or ex_shape)}; set `size` (and `frames`) to make samples uniform",
                )
                self._check_limit(log)
                continue
            shape = ex_shape
            examples.append(ex)
            decoded.append(dec)
        if not decode:
            return None
        return collate_examples(examples, decoded, latents=isinstance(src.decoder, LatentDecoder))

    def _check_limit(self, log: SkipLog) -> None:
        if self.max_skipped is not None and log.count > self.max_skipped:
            url, key, reason = log.last
            raise DataStreamError(
                f"more than max_skipped={self.max_skipped} bad samples in one data worker; last: shard {url}, "
                f"key {key!r}: {reason}"
            )

    def _emit(self, batch: dict, log: SkipLog) -> dict:
        delta = log.delta()
        if delta is not None:
            batch[SKIP_FIELD] = delta
        return batch

    def __iter__(self) -> Iterator[dict]:
        log = SkipLog()
        try:
            yield from (self._iter_train(log) if self.train else self._iter_val(log))
        except DataStreamError as err:
            # surfaced by the loader in the main process as a clean DataStreamError
            yield {ERROR_FIELD: str(err), SKIP_FIELD: log.delta()}

    def _iter_train(self, log: SkipLog) -> Iterator[dict]:
        worker, workers = _worker_split()
        c, total = self.skip, int(self.num_batches)
        role = (c + worker) % workers
        groupers: dict[str, Any] = {}
        weights = [s.weight for s in self.sources]
        for j in range(role, total, workers):
            rng = derive_rng("batch", self.seed, self.epoch, self.rank, j)
            src = self.sources[0] if len(self.sources) == 1 else rng.choices(self.sources, weights=weights)[0]
            n = draw_num_context(self.num_context, rng) + 1
            grouper = groupers.get(src.name)
            if grouper is None:
                grouper = groupers[src.name] = self._train_grouper(src, role, log)
            batch = self._make_batch(grouper, src, n, log, decode=j >= c)
            if batch is not None:
                yield self._emit(batch, log)

    def _iter_val(self, log: SkipLog) -> Iterator[dict]:
        worker, workers = _worker_split()
        units, unit = self.world_size * workers, self.rank * workers + worker
        n = self.num_context[1] + 1
        for src in self.sources:
            quota = self.quotas[src.name]
            if len(quota) != workers:
                raise DataStreamError(
                    f"validation quotas were computed for {len(quota)} workers, the loader runs {workers}"
                )
            if quota[worker] == 0:
                continue
            grouper = self._val_grouper(src, unit, units, log, cycle=True)
            for _ in range(quota[worker]):
                yield self._emit(self._make_batch(grouper, src, n, log, decode=True), log)


def worker_start_method(num_workers: int, *, decodes_video: bool = True):
    """A fork-server multiprocessing context for workers that decode video once PyAV is loaded in this
    process; else ``None`` (the platform default, fork).

    PyAV (libav) starts threads when it decodes or encodes; a DataLoader worker forked afterwards can
    inherit one of their locks held and block forever on its first video decode (seen with av 18).
    Workers forked from the clean fork server avoid that, at the price of a slower start (seconds per
    epoch: the workers are not persistent) and of the ``if __name__ == "__main__":`` guard that
    multiprocessing requires in user scripts. Image-only streams keep fork.
    """
    import multiprocessing
    import sys

    if num_workers <= 0 or not decodes_video or "av" not in sys.modules:
        return None
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "lavinkit.data.pipeline", "lavinkit.data.incontext", "lavinkit.data.schema"]
    )
    return ctx


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread per worker (decode runs in many processes)."""
    torch.set_num_threads(1)
