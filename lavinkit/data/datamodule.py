"""Lightning DataModules for in-context pair shards (images, clips, mixtures, pre-encoded latents).

Every train/val batch follows the contract of :func:`lavinkit.data.pipeline.collate_examples`::

    {"input": float32 [B, N, 3, T, H, W] in [-1, 1], "target": same, "task": list[str] (B),
     "keys": list[list[str]] (B x N), "num_context": int}          N = k + 1, the query pair last

(latent modules: ``[B, N, C, t, h, w]`` normalised latents and ``"latents": True``).

Policies (all ranks and workers follow them without talking to each other):

* Training streams resample shards with seeds derived from ``(seed, epoch, rank, worker)`` and run
  exactly ``steps_per_epoch`` batches per rank per epoch: no rank runs out of data, uneven shard counts
  cannot hang DDP. The data-parallel rank comes from the trainer's ``distributed_sampler_kwargs``.
* Validation is finite and identical on every run: shards (or, with fewer shards than
  ranks x workers, samples) are split by rank and worker; every rank yields the same number of
  batches: ``val_batches`` if given (a unit that runs short repeats its data), else the smallest count
  any rank can form (the rest is truncated). Tasks left with fewer than k+1 pairs at the end of the pass
  are dropped.
* Resume: :meth:`state_dict` stores ``(seed, epoch, consumed batches)``; after :meth:`load_state_dict`
  the next epoch iterator regroups the consumed batches without decoding them and continues with
  exactly the batches an uninterrupted run would have produced. Exact for the same seed, world size,
  ``num_workers`` and ``steps_per_epoch``; a corrupt sample inside the skipped part shifts the stream
  by the examples it would have dropped (grouping does not decode pixels).
* Bad samples are skipped and counted (``skipped``, ``skipped_by_shard``, of ``samples_read``; saved in
  checkpoints, so the counts continue after a resume); beyond ``max_skipped`` the run stops naming the last bad
  shard and key. ``fit`` shows the count without configuration: unless the trainer has one, :meth:`setup` adds a
  :class:`SkippedSamplesLogger` (``data/skipped`` in the progress bar and the loggers, and a warning summarising
  the skips at the end of training).
* Training loaders never use persistent workers: the epoch and the resume position reach the workers
  when the epoch's iterator is created. Once PyAV is loaded in the main process, workers that decode video start
  from a fork server (see :func:`lavinkit.data.pipeline.worker_start_method`): a script that iterates such a
  loader needs the ``if __name__ == "__main__":`` guard, and without it the error says so.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lavinkit.data.incontext import NumContext, parse_num_context
from lavinkit.data.pipeline import (
    ERROR_FIELD,
    SKIP_FIELD,
    DataStreamError,
    LatentDecoder,
    PairStream,
    PixelDecoder,
    Source,
    skip_summary,
    worker_init,
    worker_start_method,
)
from lavinkit.data.shards import SkipLog, find_index, resolve_urls, task_counts_from_index

Urls = str | list[str]


class _Position:
    """Where the training stream is: the epoch being read, batches delivered by the loader (``consumed``, counting
    prefetched ones), batches the training loop has taken (``processed``), a pending resume."""

    def __init__(self) -> None:
        self.epoch = 0
        self.next_epoch = 0
        self.consumed = 0
        self.processed = 0
        self.started = False
        self.resume: tuple[int, int] | None = None

    def begin(self, epoch: int | None) -> tuple[int, int]:
        """Start an epoch's iterator; ``epoch`` is the trainer's epoch (``None`` without a trainer).

        A pending resume wins over a trainer epoch that lags behind it: Lightning creates the first
        iterator after a restore before it counts the epoch finished in the checkpoint, so a run resumed
        from a checkpoint saved on the last batch of epoch e still reports epoch e at that point.
        """
        epoch = self.next_epoch if epoch is None else epoch
        skip = 0
        if self.resume is not None:
            epoch = max(epoch, self.resume[0])
            if self.resume[0] == epoch:
                skip = self.resume[1]
        self.resume = None
        self.epoch, self.consumed, self.processed, self.next_epoch, self.started = epoch, skip, skip, epoch + 1, True
        return epoch, skip


class StreamLoader(DataLoader):
    """``DataLoader(PairStream, batch_size=None)`` that sets the epoch/resume position in the dataset when
    an epoch's iterator is created, counts delivered batches, and turns worker-side bad-sample reports
    into counts (or a clean :class:`DataStreamError`) in the main process."""

    def __init__(
        self, dataset: PairStream, owner: _PairDataModule, *, position: _Position | None, **kwargs: Any
    ):
        super().__init__(
            dataset, batch_size=None, worker_init_fn=worker_init, persistent_workers=False, **kwargs
        )
        self._owner = owner
        self._position = position

    def __iter__(self):
        video = any(getattr(src.decoder, "modality", None) == "video" for src in self.dataset.sources)
        method = worker_start_method(self.num_workers, decodes_video=video)
        if method is not None and self.multiprocessing_context is None:
            self.multiprocessing_context = method
        if self._position is not None:
            self.dataset.epoch, self.dataset.skip = self._position.begin(self._owner._trainer_epoch())
        try:
            iterator = super().__iter__()
        except RuntimeError as err:
            raise _explain_worker_failure(err, self.multiprocessing_context) from err
        return self._deliver(iterator)

    def _deliver(self, iterator):
        owner = self._owner
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as err:
                raise _explain_worker_failure(err, self.multiprocessing_context) from err
            report = batch.pop(SKIP_FIELD, None)
            if report:
                owner._record_skips(report)
            if ERROR_FIELD in batch:
                raise DataStreamError(batch[ERROR_FIELD])
            owner.samples_read += sum(len(row) for row in batch.get("keys") or ())
            if self._position is not None:
                self._position.consumed += 1
            yield batch


def _explain_worker_failure(err: RuntimeError, context: Any) -> RuntimeError:
    """``err``'s message followed by what to do, for DataLoader workers that start from a fork server (video decoding
    with PyAV loaded) and fail because they re-import a main script without the ``__main__`` guard: the worker raises
    multiprocessing's bootstrapping error, the main process sees the worker exit. Other errors: ``err`` itself."""
    import sys

    method = context.get_start_method() if hasattr(context, "get_start_method") else context
    text = " ".join(str(err).split())
    if method not in ("forkserver", "spawn") or not ("bootstrapping phase" in text or "exited unexpectedly" in text):
        return err
    script = getattr(sys.modules.get("__main__"), "__file__", None) or "the main script"
    return RuntimeError(
        f"{text} -- DataLoader workers start with {method!r} (video decoding with PyAV loaded) and re-import "
        f"{script}; if it has no `if __name__ == \"__main__\":` guard, each worker starts the run again and fails "
        "with multiprocessing's bootstrapping error: put the script's code under that guard (or set num_workers=0)"
    )


class PairDataModule(pl.LightningDataModule, ABC):
    """The options every pair DataModule shares (subclasses add their shard urls and decoding options and pass
    these on with ``**kwargs``; ``lavinkit fit --data.help CLASS`` lists them all).

    Args:
        batch_size: in-context examples per batch (per rank).
        num_context: k context pairs per example; an int, or ``[k_min, k_max]`` drawn per batch.
        val_num_context: fixed k for validation and test (default: the largest training k).
        steps_per_epoch: training batches per rank per epoch (the stream resamples shards endlessly).
        val_batches: validation (and test) batches per rank; ``None`` counts what every rank can form and truncates.
        num_workers: DataLoader workers per rank.
        seed: root of every shard/shuffle/k draw (derived per epoch, rank and worker).
        shuffle_buffer: sample shuffle buffer of each training worker.
        task_weights: ``{task: weight}``: relative frequency of tasks (thinning; 0 drops a task).
        max_skipped: bad samples tolerated per rank before the run stops (``None``: no limit).
        pin_memory: DataLoader ``pin_memory``.
        prefetch_factor: DataLoader ``prefetch_factor`` (with workers; ``None``: PyTorch's default).
    """

    latents = False

    def __init__(
        self,
        *,
        batch_size: int = 8,
        num_context: NumContext = 2,
        val_num_context: int | None = None,
        steps_per_epoch: int = 1000,
        val_batches: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        task_weights: dict[str, float] | None = None,
        max_skipped: int | None = 100,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps_per_epoch < 1:
            raise ValueError(
                f"steps_per_epoch must be >= 1 (batches per rank per epoch), got {steps_per_epoch}"
            )
        if val_batches is not None and val_batches < 1:
            raise ValueError(f"val_batches must be >= 1 or None, got {val_batches}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_context = parse_num_context(num_context)
        k_val = self.num_context[1] if val_num_context is None else val_num_context
        self.val_num_context = parse_num_context(k_val)
        self.steps_per_epoch = steps_per_epoch
        self.val_batches = val_batches
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.task_weights = dict(task_weights) if task_weights else None
        self.max_skipped = max_skipped
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.skipped = 0
        self.skipped_by_shard: dict[str, int] = {}
        self.last_skipped: tuple[str, str, str] | None = None
        self.samples_read = 0  # pairs delivered in batches (a skipped sample is not among them)
        self._position = _Position()
        self._train_sources: list[Source] | None = None
        self._eval_sources: dict[str, list[Source]] = {}
        self._rank, self._world = 0, 1

    # ---- to be provided by subclasses

    @abstractmethod
    def _sources(self, split: str) -> list[Source]:
        """The streams of ``split`` (``"train"``, ``"val"``, ``"test"``): one per modality."""

    # ---- setup

    def _resolve_rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            kw = trainer.distributed_sampler_kwargs or {}
            return int(kw.get("rank", trainer.global_rank)), int(kw.get("num_replicas", trainer.world_size))
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _check_tasks(self, src: Source, n: int, what: str) -> None:
        counts = task_counts_from_index(find_index(src.urls), src.urls)
        small = {
            t: c
            for t, c in counts.items()
            if c < n and (not self.task_weights or self.task_weights.get(t, 1) > 0)
        }
        if small:
            raise ValueError(
                f"{what} ({src.name}): tasks with fewer pairs than k+1 = {n} (index.json): "
                + ", ".join(f"{t!r} has {c}" for t, c in sorted(small.items()))
            )

    def setup(self, stage: str | None = None) -> None:
        self._rank, self._world = self._resolve_rank()
        trainer = getattr(self, "trainer", None)
        if stage in (None, "fit") and trainer is not None:
            if not any(isinstance(cb, SkippedSamplesLogger) for cb in trainer.callbacks):
                trainer.callbacks.append(SkippedSamplesLogger())
        if stage in (None, "fit") and self._train_sources is None:
            self._train_sources = self._sources("train")
            for src in self._train_sources:
                self._check_tasks(src, self.num_context[1] + 1, "train")
        splits = {None: ("val", "test"), "fit": ("val",), "validate": ("val",), "test": ("test",)}
        for split in splits.get(stage, ("test",) if stage == "predict" else ()):
            if split not in self._eval_sources:
                self._eval_sources[split] = self._sources(split)
                for src in self._eval_sources[split]:
                    self._check_tasks(src, self.val_num_context[1] + 1, split)

    # ---- loaders

    def _loader_kwargs(self) -> dict:
        kw: dict[str, Any] = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kw["prefetch_factor"] = self.prefetch_factor
        return kw

    def _stream(self, sources: list[Source], *, train: bool, quotas: dict | None = None) -> PairStream:
        return PairStream(
            sources,
            train=train,
            num_context=self.num_context if train else self.val_num_context,
            seed=self.seed,
            num_batches=self.steps_per_epoch if train else None,
            quotas=quotas,
            rank=self._rank,
            world_size=self._world,
            shuffle_buffer=self.shuffle_buffer,
            task_weights=self.task_weights,
            max_skipped=self.max_skipped,
        )

    def train_dataloader(self) -> StreamLoader:
        if self._train_sources is None:
            self.setup("fit")
        if not self._train_sources:
            raise ValueError(f"{type(self).__name__}: no training urls configured")
        return StreamLoader(
            self._stream(self._train_sources, train=True),
            self,
            position=self._position,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> StreamLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> StreamLoader | list:
        """Test batches: ``test_urls`` (default: the validation urls) read like validation."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> StreamLoader | list:
        """The test batches (``lavinkit predict`` / ``trainer.predict``)."""
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> StreamLoader | list:
        """The finite, deterministic loader of ``split`` (``"val"`` or ``"test"``; policy in the module doc)."""
        if split not in self._eval_sources:
            self.setup("validate" if split == "val" else "test")
        sources = self._eval_sources[split]
        if not sources:
            return []
        workers = max(1, self.num_workers)
        units = self._world * workers
        quotas: dict[str, list[int]] = {}
        probe = self._stream(sources, train=False, quotas={})
        for src in sources:
            if len(src.urls) < units:
                warnings.warn(
                    f"{split} ({src.name}): {len(src.urls)} shards < {self._world} ranks x {workers} workers; "
                    "splitting by sample (every unit reads all shards and keeps every "
                    f"{units}-th sample)",
                    stacklevel=2,
                )
            if self.val_batches is not None:
                # split between sources; the first ones take the remainder
                i, n_src = sources.index(src), len(sources)
                share = max(1, self.val_batches // n_src + (i < self.val_batches % n_src))
                quotas[src.name] = [len(range(w, share, workers)) for w in range(workers)]
                continue
            quota, log = [], SkipLog()
            for w in range(workers):
                counts = [probe.count_val_batches(src, r * workers + w, units, log) for r in range(self._world)]
                quota.append(min(counts))
            if sum(quota) == 0:
                raise ValueError(
                    f"{split} ({src.name}): no rank can form one batch of {src.batch_size} examples of "
                    f"{self.val_num_context[1] + 1} pairs from {len(src.urls)} shards (first {src.urls[0]!r}) "
                    f"split over {self._world} ranks x {workers} workers; set val_batches to repeat the data, "
                    "or lower batch_size / val_num_context" + skip_summary(log)
                )
            quotas[src.name] = quota
        return StreamLoader(
            self._stream(sources, train=False, quotas=quotas),
            self,
            position=None,
            **self._loader_kwargs(),
        )

    # ---- position and skips

    def _trainer_epoch(self) -> int | None:
        trainer = self._fitting_trainer()
        return None if trainer is None else int(trainer.current_epoch)

    def _fitting_trainer(self):
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        from lightning.pytorch.trainer.states import TrainerFn

        return trainer if trainer.state.fn == TrainerFn.FITTING else None

    def _record_skips(self, report: dict) -> None:
        self.skipped += int(report["count"])
        for url, n in report["by_shard"].items():
            self.skipped_by_shard[url] = self.skipped_by_shard.get(url, 0) + n
        self.last_skipped = report["last"]
        if self.max_skipped is not None and self.skipped > self.max_skipped:
            url, key, reason = self.last_skipped
            raise DataStreamError(
                f"skipped {self.skipped} bad samples, more than max_skipped={self.max_skipped}; "
                f"last: shard {url}, key {key!r}: {reason}"
            )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the training batches the loop takes (the loader prefetches ahead of it): the stream position
        :meth:`state_dict` saves."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and self._position.started:
            self._position.processed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """``{"seed", "epoch", "consumed", "world_size", "num_workers", "steps_per_epoch", "skipped",
        "skipped_by_shard", "last_skipped", "samples_read"}``.

        ``consumed`` counts the training batches of ``epoch`` the training loop has taken on this rank (counted in
        :meth:`on_after_batch_transfer`, so batches prefetched by the loader are not counted).
        """
        pos = self._position
        if pos.started:
            # the epoch of the stream being read; the trainer's epoch counter runs ahead of it between
            # the end of an epoch and the next iterator, and behind it right after a restore
            # without a fitting trainer (a loader iterated by hand) every delivered batch counts
            epoch = pos.epoch
            consumed = pos.consumed if self._fitting_trainer() is None else min(pos.processed, pos.consumed)
        elif pos.resume is not None:
            epoch, consumed = pos.resume
        else:
            epoch = self._trainer_epoch()
            epoch, consumed = (pos.next_epoch if epoch is None else epoch), 0
        if consumed >= self.steps_per_epoch:
            epoch, consumed = epoch + 1, 0
        return {
            "seed": self.seed,
            "epoch": epoch,
            "consumed": consumed,
            "world_size": self._world,
            "num_workers": self.num_workers,
            "steps_per_epoch": self.steps_per_epoch,
            "skipped": self.skipped,
            "skipped_by_shard": dict(self.skipped_by_shard),
            "last_skipped": list(self.last_skipped) if self.last_skipped else None,
            "samples_read": self.samples_read,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training stream at ``(epoch, consumed)`` on the next epoch iterator, and the skip counts."""
        changed = {
            name: (state_dict.get(name), now)
            for name, now in (
                ("seed", self.seed),
                ("num_workers", self.num_workers),
                ("steps_per_epoch", self.steps_per_epoch),
            )
            if state_dict.get(name) != now
        }
        if (
            state_dict.get("world_size") not in (None, self._world)
            and getattr(self, "trainer", None) is not None
        ):
            changed["world_size"] = (state_dict.get("world_size"), self._world)
        if changed:
            warnings.warn(
                "data stream resumed with different settings "
                + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items())
                + "; the stream continues at the same epoch and step but not with the same batches",
                stacklevel=2,
            )
        self._position.resume = (int(state_dict["epoch"]), int(state_dict["consumed"]))
        self._position.next_epoch = int(state_dict["epoch"])
        self.skipped = int(state_dict.get("skipped", 0))
        self.skipped_by_shard = {str(k): int(v) for k, v in (state_dict.get("skipped_by_shard") or {}).items()}
        last = state_dict.get("last_skipped")
        self.last_skipped = tuple(last) if last else None
        self.samples_read = int(state_dict.get("samples_read", 0))


_PairDataModule = PairDataModule  # the name before the options were documented on the base class


class _SingleSourceDataModule(PairDataModule):
    """One shard set per split.

    Args:
        train_urls: training shards (brace expansion, ``pipe:``, lists, a directory of ``*.tar``, a glob, an index.json).
        val_urls: validation shards, read in a fixed order.
        test_urls: shards of ``trainer.test`` / ``trainer.predict`` (default: ``val_urls``), read like validation.
    """

    _source_name = "image"

    def __init__(self, train_urls: Urls | None = None, val_urls: Urls | None = None, test_urls: Urls | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.train_urls, self.val_urls, self.test_urls = train_urls, val_urls, test_urls

    def _sources(self, split: str) -> list[Source]:
        named, urls = _split_urls(split, {"train": self.train_urls, "val": self.val_urls, "test": self.test_urls})
        if urls is None:
            return []
        decoder = self._decoder(self._source_name)
        return [Source(self._source_name, resolve_urls(urls, what=f"{named}_urls"), decoder, self.batch_size)]

    @abstractmethod
    def _decoder(self, modality: str) -> PixelDecoder | LatentDecoder:
        """How samples of ``modality`` in this module's shards are decoded."""


def _split_urls(split: str, urls: dict[str, Urls | None]) -> tuple[str, Urls | None]:
    """``(name, urls)`` of ``split``: without test urls the test split reads the validation urls (and errors name
    them: ``val``)."""
    if split == "test" and urls["test"] is None:
        split = "val"
    return split, urls[split]


class ImagePairDataModule(_SingleSourceDataModule):
    """In-context batches of image pairs (``T = 1``).

    Args:
        size: resize (short side) + center-crop to ``size x size`` (a multiple of 16); ``None`` keeps the stored size.
    """

    def __init__(self, train_urls: Urls | None = None, val_urls: Urls | None = None, test_urls: Urls | None = None,
                 *, size: int | None = None, **kwargs: Any):
        super().__init__(train_urls, val_urls, test_urls, **kwargs)
        self.size = _check_size(size)

    def _decoder(self, modality: str) -> PixelDecoder:
        return PixelDecoder(modality, self.size)


class VideoPairDataModule(_SingleSourceDataModule):
    """In-context batches of clip pairs (``T = 1 + 4k``).

    Args:
        batch_size: in-context examples per batch (per rank).
        num_context: k context pairs per example; an int, or ``[k_min, k_max]`` drawn per batch.
        shuffle_buffer: sample shuffle buffer of each training worker.
        size: resize + center-crop every frame to ``size x size`` (a multiple of 16).
        frames: keep the first ``frames`` frames (1 + 4k); shorter clips are skipped and counted.
    """

    _source_name = "video"

    def __init__(self, train_urls: Urls | None = None, val_urls: Urls | None = None, test_urls: Urls | None = None,
                 *, batch_size: int = 2, num_context: NumContext = 1, shuffle_buffer: int = 256,
                 size: int | None = None, frames: int | None = None, **kwargs: Any):
        super().__init__(train_urls, val_urls, test_urls, batch_size=batch_size, num_context=num_context,
                         shuffle_buffer=shuffle_buffer, **kwargs)
        self.size, self.frames = _check_size(size), _check_frames(frames)

    def _decoder(self, modality: str) -> PixelDecoder:
        return PixelDecoder(modality, self.size, self.frames)


class MixtureDataModule(PairDataModule):
    """Image and clip pairs in one stream; each batch is all images or all clips, drawn by weight. Validation and
    test yield the image batches, then the clip batches (``val_batches`` is split between them).

    Args:
        image_train_urls: image shards for training.
        video_train_urls: clip shards for training.
        image_val_urls: image shards for validation.
        video_val_urls: clip shards for validation.
        image_test_urls: image test shards (default: the validation ones).
        video_test_urls: clip test shards (default: the validation ones).
        image_weight: probability weight of drawing an image batch.
        video_weight: probability weight of drawing a clip batch.
        video_batch_size: examples per clip batch (default: ``batch_size``).
        size: resize + center-crop images and frames to ``size x size`` (a multiple of 16).
        frames: keep the first ``frames`` frames of clips (1 + 4k); shorter clips are skipped and counted.
    """

    def __init__(
        self,
        image_train_urls: Urls | None = None,
        video_train_urls: Urls | None = None,
        image_val_urls: Urls | None = None,
        video_val_urls: Urls | None = None,
        image_test_urls: Urls | None = None,
        video_test_urls: Urls | None = None,
        *,
        image_weight: float = 1.0,
        video_weight: float = 1.0,
        video_batch_size: int | None = None,
        size: int | None = None,
        frames: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if image_weight < 0 or video_weight < 0 or image_weight + video_weight <= 0:
            raise ValueError(
                f"image_weight/video_weight must be >= 0 and not both 0, got {image_weight}, {video_weight}"
            )
        self.urls = {  # per modality: {split: urls}
            "image": {"train": image_train_urls, "val": image_val_urls, "test": image_test_urls},
            "video": {"train": video_train_urls, "val": video_val_urls, "test": video_test_urls},
        }
        self.weights = {"image": image_weight, "video": video_weight}
        self.video_batch_size = video_batch_size or self.batch_size
        self.size = _check_size(size)
        self.frames = _check_frames(frames)

    def _sources(self, split: str) -> list[Source]:
        out = []
        for modality, batch_size in (("image", self.batch_size), ("video", self.video_batch_size)):
            named, urls = _split_urls(split, self.urls[modality])
            if urls is None or (split == "train" and self.weights[modality] <= 0):
                continue
            what = f"{modality}_{named}_urls"
            out.append(Source(modality, resolve_urls(urls, what=what), self._decoder(modality), batch_size,
                              self.weights[modality]))
        return out

    def _decoder(self, modality: str) -> PixelDecoder | LatentDecoder:
        return PixelDecoder(modality, self.size, self.frames if modality == "video" else None)


class _LatentShards:
    """Latent shards (``<key>.input.npy`` / ``<key>.target.npy`` float16 ``[C, t, h, w]`` + json recording the VAE,
    written by ``lavinkit encode``) instead of pixels: batches hold float32 ``[B, N, C, t, h, w]`` and
    ``"latents": True``. Mixed in before a pixel DataModule, whose shard urls and options it passes on.

    Args:
        latent_shift: applied as ``(z - shift) * scale`` (identity by default: the shards written by
            ``lavinkit encode`` are already normalised).
        latent_scale: see ``latent_shift``.
        vae: if set, every sample's json ``vae`` entry must name this VAE.
    """

    latents = True

    def __init__(self, *args: Urls | None, latent_shift: float = 0.0, latent_scale: float = 1.0,
                 vae: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.decoder = LatentDecoder(shift=latent_shift, scale=latent_scale, vae=vae)

    def _decoder(self, modality: str) -> LatentDecoder:
        return self.decoder


class LatentPairDataModule(_LatentShards, _SingleSourceDataModule):
    """In-context batches of pre-encoded latent pairs (``lavinkit encode``): float32 ``[B, N, C, t, h, w]`` and
    ``"latents": True``. Latents of one batch must share their shape (one resolution per shard set)."""

    _source_name = "latent"


class LatentMixtureDataModule(_LatentShards, MixtureDataModule):
    """Image and clip latent shards (``lavinkit encode``) in one stream; each batch is all image latents or all clip
    latents, drawn by weight. Batches are those of ``LatentPairDataModule`` (``"latents": True``)."""

    def __init__(self, *args: Urls | None, **kwargs: Any):
        super().__init__(*args, size=None, frames=None, **kwargs)  # latents are not resized or trimmed


def _check_size(size: int | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if size < 16 or size % 16:
        raise ValueError(f"size must be a positive multiple of 16 (VAE 8 x patch 2), got {size}")
    return (size, size)


def _check_frames(frames: int | None) -> int | None:
    if frames is not None and (frames < 1 or (frames - 1) % 4):
        raise ValueError(f"frames must be 1 + 4k (1, 5, 9, 13, 17, ...), got {frames}")
    return frames


class SkippedSamplesLogger(pl.Callback):
    """Shows the DataModule's bad-sample count during ``fit`` and summarises it at the end.

    Logs ``data/skipped`` (summed over ranks) to the progress bar and the loggers every ``every_n_steps`` training
    steps, and at the end of training warns ``skipped K of N samples (P %); most in shard X (k)`` when any sample
    was skipped. Works with any DataModule that counts ``skipped`` (``skipped_by_shard``, ``samples_read``: lavinkit's
    pair DataModules, which add this callback themselves unless the trainer has one).
    """

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"SkippedSamplesLogger: every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "skipped") or trainer.global_step % self.every_n_steps:
            return
        pl_module.log("data/skipped", float(dm.skipped), reduce_fx="sum", sync_dist=True, prog_bar=True,
                      on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "skipped"):
            return
        parts = [(int(dm.skipped), int(getattr(dm, "samples_read", 0)), dict(getattr(dm, "skipped_by_shard", {})))]
        import torch.distributed as dist

        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (int(dm.skipped), int(getattr(dm, "samples_read", 0)),
                                           dict(getattr(dm, "skipped_by_shard", {}))))
        if trainer.is_global_zero:
            message = skipped_samples_summary(*_merge_counts(parts))
            if message:
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn(message)


def _merge_counts(parts) -> tuple[int, int, dict[str, int]]:
    skipped, read, by_shard = 0, 0, {}
    for k, n, shards in parts:
        skipped, read = skipped + k, read + n
        for url, c in shards.items():
            by_shard[url] = by_shard.get(url, 0) + c
    return skipped, read, by_shard


def skipped_samples_summary(skipped: int, samples_read: int,
                            skipped_by_shard: dict[str, int]) -> str | None:
    """``"data: skipped K of N samples (P %); most in shard X (k)"``, or ``None`` when nothing was skipped.

    ``N`` counts every sample read: the ``samples_read`` that reached batches plus the ``skipped`` ones."""
    if skipped <= 0:
        return None
    total = samples_read + skipped
    message = f"data: skipped {skipped} of {total} samples ({100.0 * skipped / total:.1f} %)"
    if skipped_by_shard:
        url, count = max(skipped_by_shard.items(), key=lambda item: (item[1], item[0]))
        message += f"; most in shard {url} ({count})"
    return message + " (bad samples: lavinkit data validate names them)"
