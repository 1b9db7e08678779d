"""Write pair shards: from official-style task folders, from videos, and the shard index.

Task folders (the layout of the official LaVin-DiT release)::

    root/<task>/<NAME>_input.<png|jpg|jpeg|webp>
    root/<task>/<NAME>_target.<png|jpg|jpeg|webp>

Videos: a folder of video files cut into clips of ``frames`` = 1 + 4k frames every ``stride`` frames,
either paired (``NAME_input.mp4`` + ``NAME_target.mp4``, which must have the same frame count, frame rate
and duration, or only the same duration when resampled to a common ``fps``) or with the input made from each video by a named, seeded transform of
:data:`lavinkit.data.demo.TASKS` (e.g. ``video_deblurring``).

Images and videos are read as displayed (EXIF orientation, display matrix, square pixels:
:mod:`lavinkit.data.media`), so sizes are compared and pairs aligned as a viewer sees them.

Next to the shards goes ``index.json`` (format: :mod:`lavinkit.data.shards`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from lavinkit.data.demo import TASKS
from lavinkit.data.media import IMAGE_EXTS, VIDEO_FILE_EXTS, image_display_size, read_video_file, video_timing
from lavinkit.data.schema import is_valid_frames, make_sample, sanitize_key
from lavinkit.data.shards import (  # noqa: F401 - the writer and the index live with the reader
    DEFAULT_MAXCOUNT,
    DEFAULT_MAXSIZE,
    FIXED_MTIME,
    INDEX_NAME,
    PairShardWriter,
    index_urls,
    read_index,
    write_index,
)


class PackError(ValueError):
    """Input that cannot be packed; the message names the files or option at fault."""


class PackOptionError(PackError):
    """A bad option value or a path that does not exist (a usage error: ``lavinkit data pack`` exits 2)."""


class PairMismatchError(PackOptionError):
    """Paired videos whose frame count, frame rate or duration differ (with ``--fps``: whose duration differs):
    the folder pairs files that do not correspond, so it is refused before anything is written (``lavinkit data
    pack`` exits 2)."""


# ---------------------------------------------------------------------------------------------------- images


def square_resize(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` so the short side is ``size`` (bicubic), then center-crop ``size x size``."""
    from PIL import Image

    t, h, w, _ = arr.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = np.empty((t, size, size, 3), np.uint8)
    for i in range(t):
        im = Image.fromarray(arr[i])
        if (nh, nw) != (h, w):
            im = im.resize((nw, nh), Image.BICUBIC)
        out[i] = np.asarray(im)[top:top + size, left:left + size]
    return out


def crop_to_multiple(arr: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Center-crop ``[T, H, W, 3]`` to the largest H, W that are multiples of ``multiple``."""
    t, h, w, _ = arr.shape
    nh, nw = h - h % multiple, w - w % multiple
    if nh == 0 or nw == 0:
        raise PackError(f"frames of {h}x{w} are smaller than {multiple} pixels")
    top, left = (h - nh) // 2, (w - nw) // 2
    return arr[:, top:top + nh, left:left + nw]


_PAIR_NAME = re.compile(r"^(?P<name>.+)_(?P<role>input|target)\.(?P<ext>[A-Za-z0-9]+)$")


def find_pairs(folder: Path, exts: tuple[str, ...]) -> list[tuple[str, Path, Path]]:
    """``[(name, input_path, target_path)]`` for ``NAME_input.<ext>`` / ``NAME_target.<ext>`` files, sorted.

    Raises PackError listing every unpaired file (and names with several inputs or targets).
    """
    roles: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(folder.iterdir()):
        m = _PAIR_NAME.match(path.name)
        if not path.is_file() or not m or m["ext"].lower() not in exts:
            continue
        roles.setdefault(m["name"], {"input": [], "target": []})[m["role"]].append(path)
    pairs, problems = [], []
    for name, r in sorted(roles.items()):
        if len(r["input"]) == 1 and len(r["target"]) == 1:
            pairs.append((name, r["input"][0], r["target"][0]))
        elif not r["input"] or not r["target"]:
            have = r["input"] + r["target"]
            missing = "target" if r["input"] else "input"
            problems.append(f"{', '.join(str(p) for p in have)} has no matching {name}_{missing}.*")
        else:
            problems.append(f"name {name!r} has several inputs/targets: {[p.name for p in r['input'] + r['target']]}")
    if problems:
        raise PackError(f"unpaired files in {folder}:\n  " + "\n  ".join(problems))
    return pairs


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) as displayed (EXIF orientation applied), from the file header."""
    try:
        return image_display_size(path)
    except ValueError as err:
        raise PackError(f"{path}: {err}") from err


def _load_image(path: Path) -> np.ndarray:
    from lavinkit.data.media import decode_image

    try:
        return decode_image(path.read_bytes()).permute(1, 2, 0).numpy()
    except ValueError as err:
        raise PackError(f"{path}: {err}") from err


def pack_task_folders(
    root: str | Path,
    out_dir: str | Path,
    *,
    tasks: list[str] | None = None,
    size: int | None = None,
    image_ext: str = "png",
    prefix: str = "images",
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: float = DEFAULT_MAXSIZE,
    progress: bool = False,
) -> Path:
    """Pack ``root/<task>/NAME_input.* + NAME_target.*`` image pairs into shards; returns the index path.

    Args:
        root: folder with one sub-folder per task (the sub-folder name is the task).
        tasks: only these task folders (default: all sub-folders holding pairs).
        size: resize (short side, bicubic) and center-crop every image to ``size x size``; without it,
            inputs and targets must already be the same size with sides multiples of 16.
        image_ext: png (lossless), jpg, webp or tiff in the shards.
        prefix, maxcount, maxsize: shard naming and size (see :class:`PairShardWriter`).
        progress: show a progress bar with an ETA.

    Samples are written round-robin over tasks (so each shard mixes tasks); keys are ``<task>-<NAME>``.
    """
    root = Path(root)
    if not root.is_dir():
        raise PackOptionError(f"task folder root not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if tasks:
        missing = sorted(set(tasks) - {p.name for p in folders})
        if missing:
            raise PackOptionError(f"task folders not found under {root}: {missing}")
        folders = [p for p in folders if p.name in tasks]
    per_task = {f.name: find_pairs(f, IMAGE_EXTS) for f in folders}
    per_task = {t: p for t, p in per_task.items() if p}
    if not per_task:
        raise PackError(f"no NAME_input.<ext> / NAME_target.<ext> pairs found under {root}/<task>/")
    if size is not None and (size <= 0 or size % 16):
        raise PackOptionError(f"--size must be a positive multiple of 16, got {size}")
    order = _round_robin({t: [(t, *p) for p in pairs] for t, pairs in per_task.items()})
    if size is None:
        bad = []
        for _, _, in_path, tgt_path in order:
            (ih, iw), (th, tw) = _image_size(in_path), _image_size(tgt_path)
            if (ih, iw) != (th, tw) or ih % 16 or iw % 16:
                bad.append(f"{in_path} {ih}x{iw}, {tgt_path.name} {th}x{tw}")
        if bad:
            raise PackError("image pairs whose sizes differ or are not multiples of 16 (pass --size N to "
                            "resize and crop):\n  " + "\n  ".join(bad))
    writer = PairShardWriter(out_dir, prefix, maxcount=maxcount, maxsize=maxsize)
    keys: set[str] = set()
    from tqdm.auto import tqdm

    with writer:
        for task, name, in_path, tgt_path in tqdm(order, desc="lavinkit data pack", unit="pair", disable=not progress):
            inp, tgt = _load_image(in_path), _load_image(tgt_path)
            if size is not None:
                inp, tgt = square_resize(inp[None], size)[0], square_resize(tgt[None], size)[0]
            key = sanitize_key(f"{task}-{name}")
            if key in keys:
                raise PackError(f"two pairs map to the same key {key!r} (from {in_path}); rename one")
            keys.add(key)
            meta = {"source": str(in_path.relative_to(root).with_name(name)), "transform": None}
            writer.write(make_sample(key, task, inp, tgt, image_ext=image_ext, meta=meta))
    return write_index(out_dir, writer.shards.values())


# ---------------------------------------------------------------------------------------------------- videos


def _round_robin(groups: dict[str, list]) -> list:
    out, lists = [], [list(v) for _, v in sorted(groups.items())]
    for i in range(max((len(v) for v in lists), default=0)):
        out += [v[i] for v in lists if i < len(v)]
    return out


def check_video_pairs(pairs: list[tuple[str, Path, Path]], fps: float | None = None) -> None:
    """Refuse video pairs that are not the same moments (:class:`lavinkit.data.media.VideoTiming`).

    Without ``fps`` frame counts, frame rates (within 0.1 %) and durations (within half a frame) must agree;
    with ``fps`` (both videos are resampled to it) only the durations, within half a resampled frame.

    Raises PairMismatchError naming both files of every mismatched pair and their figures, on one line.
    """
    bad = []
    for _, in_path, tgt_path in pairs:
        try:
            inp, tgt = video_timing(in_path), video_timing(tgt_path)
        except ValueError as err:
            raise PackError(str(err)) from err
        if not (inp.matches(tgt) if fps is None else abs(inp.duration - tgt.duration) <= 0.5 / fps + 1e-6):
            bad.append(f"{inp.describe()} vs {tgt.describe()}")
    if bad:
        what = ("differ in frame count, frame rate or duration, so their frames would not correspond (--fps F "
                "resamples both when only the rates differ)" if fps is None else
                f"differ in duration, so their frames would not correspond even resampled to {fps:g} fps")
        raise PairMismatchError(f"paired videos {what}: {'; '.join(bad)}")


def _prepare_video(path: Path, size: int | None, fps: float | None = None) -> np.ndarray:
    try:
        frames = read_video_file(path, short_side=size, fps=fps)
    except ValueError as err:
        raise PackError(str(err)) from err
    return square_resize(frames, size) if size is not None else crop_to_multiple(frames)


def pack_videos(
    videos: str | Path,
    out_dir: str | Path,
    *,
    task: str | None = None,
    transform: str | None = None,
    frames: int = 17,
    stride: int | None = None,
    size: int | None = 64,
    clip_ext: str = "mp4",
    seed: int = 0,
    fps: float | None = None,
    prefix: str = "videos",
    maxcount: int = DEFAULT_MAXCOUNT,
    maxsize: float = DEFAULT_MAXSIZE,
    progress: bool = False,
) -> Path:
    """Cut videos into clip pairs and pack them; returns the index path.

    Args:
        videos: folder of video files (mp4, avi, mkv, mov, webm, ...).
        task: task name stored with each pair (default: the transform name).
        transform: name in :data:`lavinkit.data.demo.TASKS`: every video is a target source and the
            input is made by that seeded transform. Without it the folder must hold
            ``NAME_input.<ext>`` / ``NAME_target.<ext>`` pairs, cut at the same frames; pairs whose frame
            count, frame rate or duration differ are refused (:func:`check_video_pairs`) before anything
            is written.
        frames: frames per clip, 1 + 4k.
        stride: frames between clip starts (default ``frames``: non-overlapping).
        size: resize (short side) and center-crop to ``size x size``; ``None`` keeps the resolution,
            center-cropped to multiples of 16.
        clip_ext: mp4 (H.264) or npy (lossless).
        seed: seed of the transform (each clip gets its own stream from ``(seed, video, window)``).
        fps: resample every video to this rate first (the frame on screen every ``1 / fps`` seconds:
            :func:`lavinkit.data.media.read_video_file`); paired videos then need only equal durations
            (the resampled pair is cut to the shorter by at most one frame). ``None`` keeps every frame.
        progress: show a progress bar (videos) with an ETA.
    """
    from tqdm.auto import tqdm

    videos = Path(videos)
    if not videos.is_dir():
        raise PackOptionError(f"video folder not found: {videos}")
    if not is_valid_frames(frames) or frames < 5:
        raise PackOptionError(f"--frames must be 1 + 4k with k >= 1 (5, 9, 13, 17, ...), got {frames}")
    if size is not None and (size <= 0 or size % 16):
        raise PackOptionError(f"--size must be a positive multiple of 16, got {size}")
    if fps is not None and not fps > 0:
        raise PackOptionError(f"--fps must be a positive number, got {fps}")
    stride = stride or frames
    if stride < 1:
        raise PackOptionError(f"--stride must be >= 1, got {stride}")
    writer = PairShardWriter(out_dir, prefix, maxcount=maxcount, maxsize=maxsize)
    with writer:
        if transform is not None:
            if transform not in TASKS:
                raise PackOptionError(f"unknown --transform {transform!r}; choose from {sorted(TASKS)}")
            spec = TASKS[transform]
            task = task or transform
            files = sorted(p for p in videos.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in VIDEO_FILE_EXTS)
            if not files:
                raise PackError(f"no video files ({', '.join(VIDEO_FILE_EXTS)}) in {videos}")
            need = frames + spec.extra_frames(frames)
            for vi, path in enumerate(tqdm(files, desc="lavinkit data pack", unit="video", disable=not progress)):
                clip = _prepare_video(path, size, fps)
                for wi, start in enumerate(range(0, len(clip) - need + 1, stride)):
                    rng = np.random.default_rng([seed, vi, wi])
                    inp, tgt, params = spec.fn(clip[start:start + need], rng)
                    key = sanitize_key(f"{task}-{path.stem}-{start:06d}")
                    meta = {"source": f"{path.name}@{start}", "transform": {"name": transform, "seed": [seed, vi, wi],
                                                                             "params": params}}
                    writer.write(make_sample(key, task, inp, tgt, clip_ext=clip_ext, meta=meta))
        else:
            if not task:
                raise PackOptionError("paired videos need --task NAME (or give --transform to make inputs)")
            pairs = find_pairs(videos, VIDEO_FILE_EXTS)
            check_video_pairs(pairs, fps)
            for name, in_path, tgt_path in tqdm(pairs, desc="lavinkit data pack", unit="video", disable=not progress):
                inp, tgt = _prepare_video(in_path, size, fps), _prepare_video(tgt_path, size, fps)
                if inp.shape[1:] != tgt.shape[1:]:
                    raise PackError(f"{in_path} ({inp.shape[1]}x{inp.shape[2]}) and {tgt_path} "
                                    f"({tgt.shape[1]}x{tgt.shape[2]}) differ in size; pass --size N")
                if fps is not None and abs(len(inp) - len(tgt)) <= 1:
                    # durations within half a frame can round to one more resampled frame at the end
                    inp, tgt = inp[:len(tgt)], tgt[:len(inp)]
                if len(inp) != len(tgt):  # the packets agreed, but some did not decode
                    raise PairMismatchError(f"{in_path}: {len(inp)} decodable frames vs {tgt_path}: {len(tgt)}")
                for start in range(0, len(inp) - frames + 1, stride):
                    key = sanitize_key(f"{task}-{name}-{start:06d}")
                    meta = {"source": f"{name}@{start}", "transform": None}
                    writer.write(make_sample(key, task, inp[start:start + frames], tgt[start:start + frames],
                                             clip_ext=clip_ext, meta=meta))
    if not writer.shards:
        raise PackError(f"no clip of {frames} frames fits in the videos of {videos} (videos too short?)")
    return write_index(out_dir, writer.shards.values())
