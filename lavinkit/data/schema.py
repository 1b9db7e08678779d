"""The on-disk sample schema of lavinkit pair shards (stated once, here).

One WebDataset sample holds ONE input/target pair of one task::

    <key>.input.<ext>     the input  (image: png/jpg/jpeg/webp/tif/tiff; clip: mp4 (H.264) or npy uint8 [T, H, W, 3])
    <key>.target.<ext>    the target (same modality, same T, H, W as the input)
    <key>.json            {"task": str, "modality": "image"|"video", "frames": T, "height": H, "width": W,
                           "source": str, "transform": {"name": str, "seed": ..., "params": {...}}, ...}

Only ``"task"`` is required in the json; the other fields are written by :func:`make_sample`.
Keys use ``[A-Za-z0-9_-]`` only: WebDataset splits a member name at the first dot of its basename,
so a dot in a key silently moves part of the key into the extension, and ``/`` would make a folder.

Latent shards (written by ``lavinkit encode``) use the same layout with ``<key>.input.npy`` /
``<key>.target.npy`` float16 latents ``[C, t, h, w]`` and ``"latents": true`` (plus ``"latent_shape"`` and the
``"vae"`` record) in the json; :func:`check_sample` checks them as latents.

Decoded pairs are ``uint8`` tensors ``[3, T, H, W]`` (an image is T = 1). Models need T = 1 + 4k
frames and H, W multiples of 16; :func:`decode_pair` checks that unless ``check_shape=False``.
Pixel conversions on decode (grayscale, palette, alpha, 16-bit) are listed in :mod:`lavinkit.data.media`.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lavinkit.data.media import CLIP_EXTS, IMAGE_EXTS, as_frames, decode_media, encode_media
from lavinkit.data.shards import PROBLEMS_FIELD

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


def decode_latent(sample: dict, name: str, url: str | None, key: str) -> torch.Tensor:
    """A latent member (``.npy`` bytes, or an array already loaded) -> float32 ``[C, t, h, w]``.

    Raises:
        SampleError: ``bad-extension`` (not npy), ``undecodable`` (bad npy, not a 4-d float array).
    """
    value = sample[name]
    if not isinstance(value, np.ndarray):
        if not name.lower().endswith(".npy"):
            raise SampleError(f"{name}: latent members are .npy files", url=url, key=key, kind="bad-extension")
        try:
            value = np.load(io.BytesIO(bytes(value)), allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - numpy raises several types for bad headers
            raise SampleError(f"{name}: cannot decode npy ({err})", url=url, key=key, kind="undecodable") from err
    if value.ndim != 4 or not np.issubdtype(value.dtype, np.floating):
        raise SampleError(f"{name}: expected float latents [C, t, h, w], got {value.dtype} {list(value.shape)}",
                          url=url, key=key, kind="undecodable")
    return torch.from_numpy(value.astype(np.float32))


def latent_problems(inp: torch.Tensor, tgt: torch.Tensor, meta: dict) -> list[tuple[str, str]]:
    """Problems of a decoded latent pair (float32 ``[C, t, h, w]`` each) as ``(kind, message)``.

    Kinds: ``size-mismatch`` (input and target shapes differ), ``non-finite`` (NaN/Inf, e.g. a float16
    overflow), ``meta-mismatch`` (shape differs from the json's ``latent_shape`` or the VAE's channels).
    """
    problems = []
    if inp.shape != tgt.shape:
        problems.append(("size-mismatch", f"input latents {list(inp.shape)} and target {list(tgt.shape)} differ"))
    for name, z in (("input", inp), ("target", tgt)):
        if not torch.isfinite(z).all():
            problems.append(("non-finite", f"{name} latents hold {int((~torch.isfinite(z)).sum())} NaN/Inf values"))
    shape = meta.get("latent_shape")
    if isinstance(shape, list) and shape != list(inp.shape):
        problems.append(("meta-mismatch", f"json latent_shape {shape} != input latents {list(inp.shape)}"))
    vae = meta.get("vae")
    channels = vae.get("latent_channels") if isinstance(vae, dict) else None
    if isinstance(channels, int) and channels != inp.shape[0]:
        problems.append(("meta-mismatch", f"the json's VAE makes {channels} latent channels, input has {inp.shape[0]}"))
    return problems


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


class DataStreamError(RuntimeError):
    """The data stream cannot go on (too many bad samples, a task too small for k+1 pairs, no data)."""


@dataclass(frozen=True)
class Problem:
    """One problem of a shard or sample: ``key`` is ``None`` for shard-level problems (kinds: ``lavinkit.data.validate``)."""

    url: str
    key: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = self.url if self.key is None else f"{self.url} [{self.key}]"
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class RawPair:
    """A checked, undecoded pair: the raw sample, its parsed metadata and its input/target member names."""

    sample: dict
    key: str
    task: str
    meta: dict
    members: tuple[str, str] = ("input", "target")

    @property
    def url(self) -> str:
        return self.sample.get("__url__", "<unknown shard>")


_KNOWN_SUFFIX = re.compile(r"^(?P<key>[^/]*?)\.(?P<suffix>(?:input|target)\.[A-Za-z0-9]+|json)$", re.IGNORECASE)
# problems that do not make a sample unusable (extra members, tasks outside a given list, json fields that
# disagree with the pixels): validate reports them, the streams and decode_pair go on
_NOT_FATAL = ("unknown-member", "unknown-task", "meta-mismatch")


def check_sample(sample: dict, *, decode: bool = True, check_shape: bool = True, tasks: set[str] | None = None,
                 ) -> tuple[list[Problem], dict | None, dict[str, torch.Tensor]]:
    """THE sample checker (training streams, ``lavinkit data validate``, ``inspect``, ``encode``, ``eval``).

    Reports the problems the shard reader attached to the sample (``"__problems__"``: duplicate or
    non-adjacent members, see :func:`lavinkit.data.shards.shard_samples`), empty (0-byte) members, then
    checks key, members and json, and with ``decode`` the contents: pixel pairs are decoded to uint8
    ``[3, T, H, W]`` and shape-checked; latent pairs (json ``"latents": true``, written by ``lavinkit encode``)
    are loaded as float32 ``[C, t, h, w]`` and checked against their json (:func:`latent_problems`).

    Args:
        sample: a raw sample ``{"__key__", "__url__", member: bytes}`` (members may be pre-decoded: ndarray, dict).
        decode: also decode input and target and check their shapes (``False``: keys, members and json only).
        check_shape: with ``decode``, require T = 1 + 4k and H, W multiples of 16 (pixel pairs).
        tasks: known task names (``None``: any task).

    Returns:
        ``(problems, meta, decoded)``: every problem found, the parsed json (``None`` if unusable) and the
        ``{"input", "target"}`` tensors that were decoded.
    """
    url, key = sample.get("__url__") or "<unknown shard>", sample.get("__key__", "?")
    members = {k: v for k, v in sample.items() if not k.startswith("__")}
    problems: list[Problem] = []

    def add(kind: str, msg: str, k: str = key) -> None:
        problems.append(Problem(url, k, kind, msg))

    for kind, msg in sample.get(PROBLEMS_FIELD, ()):
        add(kind, msg)
    # the later part of a key split in two lacks the members of the first part: that is the problem, not more
    split = any(p.kind == "non-adjacent" for p in problems)
    # a dot in the real key shows up as a suffix like "b.input.png" under key "a" (WebDataset splits at the first dot)
    dotted: dict[str, list[str]] = {}
    for suffix in list(members):
        m = _KNOWN_SUFFIX.match(suffix)
        if m and m["key"]:
            dotted.setdefault(f"{key}.{m['key']}", []).append(f"{key}.{suffix}")
            members.pop(suffix)
    for real, files in dotted.items():
        add("bad-key", f"key {real!r} contains a dot (WebDataset splits keys at the first dot); members {files}", real)
    if not members:
        return problems, None, {}
    problem = key_problem(key)
    if problem:
        add("bad-key", problem)
        return problems, None, {}
    found, unknown = split_members(members)
    # an empty input/target/json is reported as such (not also as missing, undecodable or bad json)
    empty_groups = set()
    for member, names in found.items():
        for name in [n for n in names if isinstance(members[n], (bytes, bytearray, memoryview)) and not members[n]]:
            add("empty-member", f"member {key}.{name} is empty (0 bytes)")
            names.remove(name)
            members.pop(name)
            empty_groups.add(member)
    for name in unknown:
        add("unknown-member", f"member {key}.{name!r} is not input.<ext>, target.<ext> or json")
    for member in MEMBERS:
        if not found[member] and member not in empty_groups and not split:
            add("missing-member", f"missing member {member}.<ext>")
        elif len(found[member]) > 1:
            add("duplicate-member", f"more than one {member} member: {sorted(found[member])}")
    meta = None
    if found["json"] or not ("json" in empty_groups or split):
        try:
            meta = parse_meta(members, url, key)
            if tasks is not None and meta["task"] not in tasks:
                add("unknown-task", f"task {meta['task']!r} is not one of the known tasks {sorted(tasks)}")
        except SampleError as err:
            add(err.kind, err.reason)
    decoded: dict[str, torch.Tensor] = {}
    if not decode:
        return problems, meta, decoded
    latents = bool(meta and meta.get("latents") is True)
    for member in MEMBERS:
        if len(found[member]) == 1:
            try:
                decode_one = decode_latent if latents else decode_member
                decoded[member] = decode_one(members, found[member][0], url, key)
            except SampleError as err:
                add(err.kind, err.reason)
    if len(decoded) == 2:
        inp, tgt = decoded["input"], decoded["target"]
        if latents:
            for kind, msg in latent_problems(inp, tgt, meta):
                add(kind, msg)
            return problems, meta, decoded
        for kind, msg in shape_problems(inp, tgt, check_shape=check_shape):
            add(kind, msg)
        got = {"frames": inp.shape[1], "height": inp.shape[2], "width": inp.shape[3]}
        wrong = [f"{k} {meta[k]} != {v}" for k, v in got.items() if meta and k in meta and meta[k] != v]
        if wrong:
            add("meta-mismatch", f"json disagrees with the input pixels: {', '.join(wrong)}")
    return problems, meta, decoded


def _raise_first(problems: list[Problem], sample: dict) -> None:
    fatal = [p for p in problems if p.kind not in _NOT_FATAL]
    if fatal:
        p = fatal[0]
        raise SampleError(p.message, url=sample.get("__url__"), key=p.key, kind=p.kind)


def check_raw(sample: dict) -> RawPair:
    """Check what can be checked without decoding (key, members, json with a task) with :func:`check_sample`.

    Raises:
        SampleError: the first problem, naming shard and key.
    """
    problems, meta, _ = check_sample(sample, decode=False)
    _raise_first(problems, sample)
    found, _ = split_members(sample)
    return RawPair(sample=sample, key=sample["__key__"], task=meta["task"], meta=meta,
                   members=(found["input"][0], found["target"][0]))


def decode_pair(sample: dict, *, check_shape: bool = True, latents: bool = False) -> dict:
    """Decode a raw WebDataset sample (member name -> bytes) into a pair.

    Args:
        sample: ``{"__key__", "__url__", "input.<ext>", "target.<ext>", "json"}``; members may also be
            already decoded (ndarray for npy, dict for json).
        check_shape: also require T = 1 + 4k and H, W multiples of 16 (``lavinkit data validate``
            reports those; the training pipelines enforce them).
        latents: accept latent pairs (written by ``lavinkit encode``); they decode to float32 ``[C, t, h, w]``.

    Returns:
        ``{"key": str, "task": str, "url": str, "input": uint8 [3, T, H, W], "target": uint8 [3, T, H, W],
        "meta": dict}``.

    Raises:
        SampleError: naming the shard url and key (missing/duplicate member, bad key, undecodable
            file, json without task, different input/target shapes, bad frame count or size, a latent
            pair without ``latents=True``).
    """
    problems, meta, decoded = check_sample(sample, check_shape=check_shape)
    _raise_first(problems, sample)
    if meta.get("latents") is True and not latents:
        raise SampleError("holds latents (written by `lavinkit encode`); pixel pairs are expected here",
                          url=sample.get("__url__"), key=sample["__key__"], kind="latents")
    return {"key": sample["__key__"], "task": meta["task"], "url": sample.get("__url__"), **decoded, "meta": meta}
