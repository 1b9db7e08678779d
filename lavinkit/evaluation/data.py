"""Evaluation pairs, grouped by task: from a folder of task folders or from pair shards.

Both sources give :class:`EvalTask` objects whose pairs are listed in name (key) order and read on first use,
at the evaluated size, with the loaders of ``lavinkit infer`` (bicubic + antialias resize, clips cut to the
largest ``1 + 4k`` frames). A task holds images or clips, never both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["EvalError", "EvalTask", "tasks_from_folders", "tasks_from_shards"]

# (size, max_frames) -> (input uint8 [T, H, W, 3], target uint8 [T, H, W, 3]) at that size
PairLoader = Callable[[tuple[int, int], int | None], tuple[np.ndarray, np.ndarray]]


class EvalError(ValueError):
    """A user error of the evaluation (the message names the file, task or option at fault)."""


def to_pixels(frames: np.ndarray) -> Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[1, 3, T, H, W]`` in [-1, 1] (what ``lavinkit infer`` feeds the pipeline)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()  # [3, T, H, W]
    return ((x / 255 - 0.5) * 2)[None]


@dataclass
class EvalTask:
    """The pairs of one task.

    Attributes:
        name: task name (folder name, or the ``"task"`` of the shard json).
        modality: ``"image"`` or ``"video"``.
        where: the folder or shard urls, for messages.
        loaders: ``{pair name: loader}`` in name order; a loader returns the input and target at a given size.
    """

    name: str
    modality: str
    where: str
    loaders: dict[str, PairLoader]
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return list(self.loaders)

    def pair(self, name: str, size: tuple[int, int], max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(input, target)`` uint8 ``[T, H, W, 3]`` of pair ``name`` at ``size`` (cached in that compact form)."""
        key = (name, tuple(size), max_frames)
        if key not in self._cache:
            inp, tgt = self.loaders[name](tuple(size), max_frames)
            if inp.shape != tgt.shape:
                raise EvalError(f"task {self.name} ({self.where}), pair {name!r}: input [T, H, W] "
                                f"{list(inp.shape[:3])} and target {list(tgt.shape[:3])} differ")
            self._cache[key] = (inp, tgt)
        return self._cache[key]


def _suffix(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def tasks_from_folders(root: str | Path) -> dict[str, EvalTask]:
    """Tasks of a folder of task folders (``NAME_input.EXT`` / ``NAME_target.EXT``), as ``lavinkit infer`` reads them.

    Raises:
        EvalError: no such folder, unpaired files, or images and clips mixed in one task folder.
    """
    from lavinkit.commands.infer import CLIP_EXTS, IMAGE_EXTS, InferError, find_pairs, load_media, task_folders

    try:
        folders = task_folders(Path(root))
        found = {folder: find_pairs(folder) for folder in folders}
    except InferError as err:
        raise EvalError(str(err)) from None
    tasks = {}
    for folder, pairs in found.items():
        if not pairs:
            continue
        kinds: dict[str, list[str]] = {"image": [], "video": []}
        for inp, tgt in pairs.values():
            for path in (inp, tgt):
                kinds["image" if _suffix(path) in IMAGE_EXTS else "video"].append(path.name)
        if kinds["image"] and kinds["video"]:
            raise EvalError(f"--task-folder {folder}: mixes images ({kinds['image'][0]}, ...) and clips "
                            f"({kinds['video'][0]}, ...); a task folder holds one kind ({IMAGE_EXTS} or {CLIP_EXTS})")

        def loader(inp: Path, tgt: Path) -> PairLoader:
            def load(size, max_frames):
                try:
                    return load_media(inp, size, max_frames).uint8, load_media(tgt, size, max_frames).uint8
                except InferError as err:
                    raise EvalError(str(err)) from None

            return load

        tasks[folder.name] = EvalTask(folder.name, "image" if kinds["image"] else "video", str(folder),
                                      {name: loader(*paths) for name, paths in pairs.items()})
    if not tasks:
        raise EvalError(f"--task-folder {root}: no NAME_input.EXT / NAME_target.EXT pairs in it or its subfolders")
    return dict(sorted(tasks.items()))


def tasks_from_shards(urls: str | Sequence[str]) -> dict[str, EvalTask]:
    """Tasks of pair shards (``lavinkit.data.schema``); pairs named by sample key.

    The encoded members are held in memory and decoded when a pair is first used.

    Args:
        urls: shard urls, a folder of shards or a glob (``lavinkit.data.shards.resolve_urls``).

    Raises:
        EvalError: missing shards, an unreadable shard or sample, latent shards, a key seen twice, or images
            and clips mixed in one task.
    """
    from lavinkit.commands.infer import prepare_frames
    from lavinkit.data.media import IMAGE_EXTS, decode_media
    from lavinkit.data.pipeline import check_raw
    from lavinkit.data.schema import SampleError
    from lavinkit.data.shards import SkipLog, raw_samples, resolve_urls

    try:
        resolved = resolve_urls(urls, what="--shards")
    except (FileNotFoundError, ValueError) as err:
        raise EvalError(str(err)) from None
    log = SkipLog()
    # task -> key -> (input bytes, input member name, target bytes, target member name, shard url)
    members: dict[str, dict[str, tuple[bytes, str, bytes, str, str]]] = {}
    modality: dict[str, tuple[str, str]] = {}  # task -> (modality, "url key" where it was first seen)
    for sample in raw_samples(({"url": u} for u in resolved), log):
        try:
            pair = check_raw(sample)
        except SampleError as err:
            raise EvalError(f"--shards: {err} (lavinkit data validate lists every problem)") from None
        where = f"shard {pair.url}, key {pair.key!r}"
        if pair.meta.get("latents"):
            raise EvalError(f"--shards: {where} holds latents (lavinkit encode); evaluation needs pixel pair shards")
        ext = pair.members[0].split(".", 1)[1].lower()
        kind = pair.meta.get("modality") or ("image" if ext in IMAGE_EXTS else "video")
        first = modality.setdefault(pair.task, (kind, where))
        if first[0] != kind:
            raise EvalError(f"--shards: task {pair.task} mixes {first[0]} pairs ({first[1]}) and {kind} pairs "
                            f"({where}); a task holds one kind")
        task_pairs = members.setdefault(pair.task, {})
        if pair.key in task_pairs:
            raise EvalError(f"--shards: task {pair.task}: key {pair.key!r} appears twice ({where})")
        task_pairs[pair.key] = (sample[pair.members[0]], pair.members[0], sample[pair.members[1]], pair.members[1],
                                pair.url)
    if log.count:
        url, key, reason = log.last
        raise EvalError(f"--shards: cannot read shard {url} (key {key}): {reason}")
    if not members:
        raise EvalError(f"--shards {urls}: no samples")

    def loader(raw: tuple, key: str) -> PairLoader:
        def load(size, max_frames):
            out = []
            for data, name in ((raw[0], raw[1]), (raw[2], raw[3])):
                try:
                    frames = decode_media(bytes(data), name.split(".", 1)[1])  # uint8 [3, T, H, W]
                except ValueError as err:
                    raise EvalError(f"--shards: shard {raw[4]}, key {key!r}: {name}: {err}") from None
                out.append(prepare_frames(frames.permute(1, 0, 2, 3), size, max_frames)[1])
            return out[0], out[1]

        return load

    def where(pairs: dict) -> str:
        urls = sorted({raw[4] for raw in pairs.values()})
        return urls[0] if len(urls) == 1 else f"{len(urls)} shards: {', '.join(urls[:3])}{', ...' * (len(urls) > 3)}"

    return {
        task: EvalTask(task, modality[task][0], where(pairs),
                       {key: loader(raw, key) for key, raw in sorted(pairs.items())})
        for task, pairs in sorted(members.items())
    }
