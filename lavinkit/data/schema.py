"""The on-disk sample schema of lavinkit pair shards (stated once, here).

One WebDataset sample holds ONE input/target pair of one task::

    <key>.input.<ext>     the input  (image: png/jpg/jpeg/webp; clip: mp4 (H.264) or npy uint8 [T, H, W, 3])
    <key>.target.<ext>    the target (same modality, same T, H, W as the input)
    <key>.json            {"task": str, "modality": "image"|"video", "frames": T, "height": H, "width": W,
                           "source": str, "transform": {"name": str, "seed": ..., "params": {...}}, ...}

Only ``"task"`` is required in the json; the other fields are written by :func:`make_sample`.
Keys use ``[A-Za-z0-9_-]`` only: WebDataset splits a member name at the first dot of its basename,
so a dot in a key silently moves part of the key into the extension, and ``/`` would make a folder.

Decoded pairs are ``uint8`` tensors ``[3, T, H, W]`` (an image is T = 1). Models need T = 1 + 4k
frames and H, W multiples of 16; :func:`decode_pair` checks that unless ``check_shape=False``.
Pixel conversions on decode (grayscale, palette, alpha, 16-bit) are listed in :mod:`lavinkit.data.media`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import torch

from lavinkit.data.media import CLIP_EXTS, IMAGE_EXTS, as_frames, decode_media, encode_media

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
MEMBERS = ("input", "target")
SPATIAL_MULTIPLE = 16
TEMPORAL_STRIDE = 4


class SampleError(ValueError):
    """A sample that does not follow the schema. The message names the shard url and the key."""

    def __init__(self, message: str, *, url: str | None = None, key: str | None = None, kind: str = "invalid"):
        self.url = url
        self.key = key
        self.kind = kind
        self.reason = message
        where = f"shard {url or '<unknown shard>'}, key {key!r}"
        super().__init__(f"{where}: {message}")


def key_problem(key: str) -> str | None:
    """Return why ``key`` is not a valid sample key, or ``None`` when it is."""
    if not isinstance(key, str) or not key:
        return "key is empty"
    if "." in key:
        return f"key {key!r} contains a dot (WebDataset would split the key at it)"
    if not KEY_PATTERN.match(key):
        bad = sorted({c for c in key if not re.match(r"[A-Za-z0-9_-]", c)})
        return f"key {key!r} has characters outside [A-Za-z0-9_-]: {''.join(bad)!r}"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if valid, else raise ``ValueError`` saying why."""
    problem = key_problem(key)
    if problem:
        raise ValueError(problem)
    return key


def sanitize_key(name: str) -> str:
    """Map any string to a valid key: characters outside ``[A-Za-z0-9_-]`` become ``_``."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return key or "_"


def is_valid_frames(t: int) -> bool:
    """T = 1 + 4k (k >= 0)."""
    return t >= 1 and (t - 1) % TEMPORAL_STRIDE == 0


def _as_thwc(arr: Any, name: str) -> np.ndarray:
    """numpy ``[H, W, 3]`` / ``[T, H, W, 3]`` or torch ``[3, H, W]`` / ``[3, T, H, W]`` uint8 -> ``[T, H, W, 3]``."""
    if isinstance(arr, torch.Tensor):
        t = arr.detach().cpu()
        if t.ndim == 3:
            t = t.unsqueeze(1)
        if t.ndim != 4 or t.shape[0] != 3:
            raise ValueError(f"{name}: torch tensors must be [3, H, W] or [3, T, H, W], got {list(t.shape)}")
        arr = t.permute(1, 2, 3, 0).numpy()
    return as_frames(np.asarray(arr), name)


def make_sample(
    key: str,
    task: str,
    input_arr: Any,
    target_arr: Any,
    *,
    image_ext: str = "png",
    clip_ext: str = "mp4",
    meta: dict | None = None,
    quality: int = 95,
    fps: int = 8,
    crf: int = 18,
) -> dict:
    """Encode one pair as a WebDataset sample dict (ready for ``webdataset.ShardWriter.write``).

    Args:
        key: sample key, ``[A-Za-z0-9_-]+``.
        task: task name stored in the json.
        input_arr, target_arr: ``uint8`` RGB, numpy ``[H, W, 3]`` / ``[T, H, W, 3]`` or torch
            ``[3, H, W]`` / ``[3, T, H, W]``; same shape. T = 1 is an image, T > 1 a clip.
        image_ext: png (lossless), jpg/jpeg or webp (``quality``) for images.
        clip_ext: mp4 (H.264, ``fps``/``crf``) or npy (lossless) for clips.
        meta: extra json fields (e.g. ``source``, ``transform``); cannot override the derived ones.

    Returns:
        ``{"__key__": key, "input.<ext>": bytes, "target.<ext>": bytes, "json": bytes}``.
    """
    validate_key(key)
    if not isinstance(task, str) or not task:
        raise ValueError(f"key {key!r}: task must be a non-empty string, got {task!r}")
    inp = _as_thwc(input_arr, f"key {key!r} input")
    tgt = _as_thwc(target_arr, f"key {key!r} target")
    if inp.shape != tgt.shape:
        raise ValueError(f"key {key!r}: input {list(inp.shape)} and target {list(tgt.shape)} differ ([T, H, W, 3])")
    t, h, w, _ = inp.shape
    modality = "image" if t == 1 else "video"
    ext = (image_ext if modality == "image" else clip_ext).lower()
    allowed = IMAGE_EXTS if modality == "image" else CLIP_EXTS
    if ext not in allowed:
        raise ValueError(f"key {key!r}: extension {ext!r} is not valid for {modality}; expected one of {allowed}")
    info = dict(meta or {})
    info.update(task=task, modality=modality, frames=int(t), height=int(h), width=int(w))
    return {
        "__key__": key,
        f"input.{ext}": encode_media(inp, ext, quality=quality, fps=fps, crf=crf),
        f"target.{ext}": encode_media(tgt, ext, quality=quality, fps=fps, crf=crf),
        "json": json.dumps(info, sort_keys=True).encode("utf-8"),
    }


def split_members(sample: dict) -> tuple[dict[str, list[str]], list[str]]:
    """Group a raw sample's member names: ``({"input": [...], "target": [...], "json": [...]}, unknown)``."""
    found: dict[str, list[str]] = {"input": [], "target": [], "json": []}
    unknown = []
    for name in sample:
        if name.startswith("__"):
            continue
        low = name.lower()
        if low == "json":
            found["json"].append(name)
        elif "." in low and low.split(".", 1)[0] in MEMBERS:
            found[low.split(".", 1)[0]].append(name)
        else:
            unknown.append(name)
    return found, unknown


def shape_problems(inp: torch.Tensor, tgt: torch.Tensor, *, check_shape: bool = True) -> list[tuple[str, str]]:
    """Problems of a decoded pair (``[3, T, H, W]`` each) as ``(kind, message)``; empty when fine.

    Kinds: ``size-mismatch`` (always checked), ``frames`` (T != 1 + 4k) and ``size-multiple``
    (H or W not a multiple of 16), the last two only with ``check_shape``.
    """
    problems = []
    if inp.shape != tgt.shape:
        problems.append(
            ("size-mismatch", f"input [T, H, W] = {list(inp.shape[1:])} differs from target {list(tgt.shape[1:])}")
        )
    if check_shape:
        for name, x in (("input", inp), ("target", tgt)):
            t, h, w = x.shape[1:]
            if not is_valid_frames(t):
                problems.append(("frames", f"{name} has {t} frames; clips need 1 + 4k frames (1, 5, 9, 13, 17, ...)"))
            if h % SPATIAL_MULTIPLE or w % SPATIAL_MULTIPLE:
                problems.append(
                    ("size-multiple", f"{name} is {h}x{w}; height and width must be multiples of {SPATIAL_MULTIPLE}")
                )
            if inp.shape == tgt.shape:
                break  # the target has the same shape: one report is enough
    return problems


def decode_member(sample: dict, name: str, url: str | None, key: str) -> torch.Tensor:
    value = sample[name]
    ext = name.split(".", 1)[1].lower()
    if isinstance(value, np.ndarray):  # an upstream .decode() already turned .npy into an array
        value = value[None] if value.ndim == 3 else value
        if value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3:
            raise SampleError(f"{name}: expected uint8 [T, H, W, 3], got {value.dtype} {list(value.shape)}",
                              url=url, key=key, kind="undecodable")
        return torch.from_numpy(np.ascontiguousarray(value)).permute(3, 0, 1, 2).contiguous()
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise SampleError(f"{name}: expected raw bytes, got {type(value).__name__}", url=url, key=key, kind="undecodable")
    if ext not in IMAGE_EXTS + CLIP_EXTS:
        raise SampleError(f"{name}: unknown extension {ext!r}; expected one of {IMAGE_EXTS + CLIP_EXTS}",
                          url=url, key=key, kind="bad-extension")
    try:
        return decode_media(bytes(value), ext)
    except ValueError as err:
        raise SampleError(f"{name}: {err}", url=url, key=key, kind="undecodable") from err


def parse_meta(sample: dict, url: str | None = None, key: str = "?") -> dict:
    """The sample's json as a dict with a non-empty ``"task"`` string, else :class:`SampleError`."""
    raw = sample.get("json")
    if raw is None:
        raise SampleError("missing member json", url=url, key=key, kind="missing-member")
    if isinstance(raw, dict):
        meta = raw
    else:
        try:
            meta = json.loads(bytes(raw).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SampleError(f"json: not valid JSON ({err})", url=url, key=key, kind="bad-json") from err
    if not isinstance(meta, dict):
        raise SampleError("json: must be an object", url=url, key=key, kind="bad-json")
    task = meta.get("task")
    if not isinstance(task, str) or not task:
        raise SampleError('json: needs a non-empty string "task"', url=url, key=key, kind="missing-task")
    return meta


def decode_pair(sample: dict, *, check_shape: bool = True) -> dict:
    """Decode a raw WebDataset sample (member name -> bytes) into a pair.

    Args:
        sample: ``{"__key__", "__url__", "input.<ext>", "target.<ext>", "json"}``; members may also be
            already decoded (ndarray for npy, dict for json).
        check_shape: also require T = 1 + 4k and H, W multiples of 16 (``lavinkit data validate``
            reports those; the training pipelines enforce them).

    Returns:
        ``{"key": str, "task": str, "url": str, "input": uint8 [3, T, H, W], "target": uint8 [3, T, H, W],
        "meta": dict}``.

    Raises:
        SampleError: naming the shard url and key (missing/duplicate member, bad key, undecodable
            file, json without task, different input/target shapes, bad frame count or size).
    """
    key = sample.get("__key__", "?")
    url = sample.get("__url__")
    problem = key_problem(key)
    if problem:
        raise SampleError(problem, url=url, key=key, kind="bad-key")
    found, _ = split_members(sample)
    for member in MEMBERS:
        if not found[member]:
            raise SampleError(f"missing member {member}.<ext>", url=url, key=key, kind="missing-member")
        if len(found[member]) > 1:
            raise SampleError(f"more than one {member} member: {sorted(found[member])}", url=url, key=key,
                              kind="duplicate-member")
    meta = parse_meta(sample, url, key)
    inp = decode_member(sample, found["input"][0], url, key)
    tgt = decode_member(sample, found["target"][0], url, key)
    problems = shape_problems(inp, tgt, check_shape=check_shape)
    if problems:
        raise SampleError("; ".join(msg for _, msg in problems), url=url, key=key, kind=problems[0][0])
    return {"key": key, "task": meta["task"], "url": url, "input": inp, "target": tgt, "meta": meta}
