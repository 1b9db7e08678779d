"""In-memory codecs for the members of a pair sample: images (png/jpg/webp), clips (mp4 via PyAV, npy).

Every decoder returns ``uint8`` RGB; every encoder takes ``uint8`` RGB and returns ``bytes``.

Conversions applied on decode (so any valid file yields 3-channel 8-bit pixels):

- grayscale (``L``, ``1``, ``LA``) -> the gray value replicated to R, G, B;
- palette (``P``) -> its RGB colours;
- RGBA / LA -> alpha dropped (no compositing);
- 16-bit PNG -> scaled to 8 bit with ``round(v * 255 / 65535)``.

Clips in mp4 are H.264 (libx264, yuv420p) encoded and decoded entirely in memory with PyAV (one
decoder thread: frame threads cost more CPU than they save on short clips). Limited-range BT.601
yuv420p frames (what libx264 writes here, and swscale's reading of unflagged streams) are collected
as Y/U/V planes and converted to RGB for the whole clip at once (:func:`yuv420_to_rgb`: exact BT.601
with rounding, nearest chroma upsampling; within 3 levels of swscale's ``rgb24``, whose fixed-point
tables sit ~1 level low). Other pixel formats and colour flags go through swscale, reusing one
``VideoReformatter`` per process (``frame.to_ndarray(format="rgb24")`` builds a context per frame).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
CLIP_EXTS = ("mp4", "npy")
VIDEO_FILE_EXTS = ("mp4", "avi", "mkv", "mov", "webm", "m4v", "mpg", "mpeg")

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
_REFORMATTER = None


def _reformatter():
    global _REFORMATTER
    if _REFORMATTER is None:
        from av.video.reformatter import VideoReformatter

        _REFORMATTER = VideoReformatter()
    return _REFORMATTER


def _to_uint8_from_16bit(x: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit with ``round(v * 255 / 65535)``."""
    return ((x.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def decode_image(data: bytes) -> torch.Tensor:
    """Decode png/jpg/webp bytes to an RGB ``uint8`` tensor ``[3, H, W]`` (with PIL).

    Raises ``ValueError`` when the bytes cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise ValueError("empty file")
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im)
            arr = _to_uint8_from_16bit(np.clip(arr, 0, 65535)) if arr.dtype != np.uint8 else arr
            arr = np.repeat(arr[..., None], 3, axis=-1)
        else:
            arr = np.array(im if im.mode == "RGB" else im.convert("RGB"))  # writable copy for torch
    except UnidentifiedImageError as err:
        raise ValueError("cannot decode image (not a recognised image format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image ({err})") from err
    # [H, W, 3] -> [3, H, W] (a view: the float conversion downstream makes it contiguous)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def encode_image(arr: np.ndarray, ext: str = "png", *, quality: int = 95) -> bytes:
    """Encode an RGB ``uint8`` array ``[H, W, 3]`` as ``ext`` (png, jpg/jpeg or webp).

    PNG is lossless (zlib level 1: ~2x faster to write than 6 for ~10 % more bytes); jpg/webp use ``quality``.
    """
    from PIL import Image

    ext = ext.lower()
    if ext not in _PIL_FORMATS:
        raise ValueError(f"unknown image extension {ext!r}; expected one of {IMAGE_EXTS}")
    arr = _check_rgb(arr, ndim=3)
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if ext == "png":
        im.save(buf, "PNG", compress_level=1)
    elif ext == "webp":
        im.save(buf, "WEBP", quality=quality, method=4)
    else:
        im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# BT.601 limited range ("MPEG"): Y in [16, 235], U/V in [16, 240] around 128
_Y_SCALE = 255 / 219
_R_V = 1.402 * 255 / 224
_G_U = 1.772 * 0.114 / 0.587 * 255 / 224
_G_V = 1.402 * 0.299 / 0.587 * 255 / 224
_B_U = 1.772 * 255 / 224
# colour flags (AVColorRange, AVColorSpace) that swscale reads as limited-range BT.601
_BT601_RANGES = (0, 1)  # unspecified, MPEG
_BT601_SPACES = (2, 5, 6)  # unspecified, BT470BG, SMPTE170M


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> torch.Tensor:
    """Limited-range BT.601 yuv420p planes -> RGB ``uint8 [3, T, H, W]`` (contiguous).

    Args:
        y: ``uint8 [T, H, W]`` luma (H, W even).
        u, v: ``uint8 [T, H/2, W/2]`` chroma; each sample covers a 2x2 block of pixels (nearest).
    """
    t, h, w = y.shape
    luma = torch.from_numpy(y).to(torch.float32).mul_(_Y_SCALE).add_(0.5 - 16 * _Y_SCALE)  # +0.5: round
    cb = torch.from_numpy(u).to(torch.float32).sub_(128)
    cr = torch.from_numpy(v).to(torch.float32).sub_(128)
    # chroma terms at chroma resolution, broadcast over each 2x2 block
    luma = luma.view(t, h // 2, 2, w // 2, 2)
    out = torch.empty((3, t, h // 2, 2, w // 2, 2), dtype=torch.float32)
    torch.add(luma, cr.mul(_R_V)[:, :, None, :, None], out=out[0])
    torch.sub(luma, cb.mul(_G_U).add_(cr, alpha=_G_V)[:, :, None, :, None], out=out[1])
    torch.add(luma, cb.mul_(_B_U)[:, :, None, :, None], out=out[2])
    return out.clamp_(0, 255).to(torch.uint8).view(3, t, h, w)


def _plane(plane, rows: int, cols: int) -> np.ndarray:
    """A frame plane as a ``uint8 [rows, cols]`` view (lines are padded to ``line_size``)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :cols]


def decode_clip(data: bytes, container_format: str | None = None) -> torch.Tensor:
    """Decode an in-memory video (any container/codec PyAV reads; mp4/H.264 here) to RGB ``uint8 [3, T, H, W]``
    (contiguous, channel-first: the layout batches use). ``container_format`` (e.g. ``"mp4"``) skips
    container probing.

    Raises ``ValueError`` when the bytes cannot be decoded.
    """
    import av

    if len(data) == 0:
        raise ValueError("empty file")
    planes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rgb: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), format=container_format) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # short clips: decoder threads cost more than they save
            for f in container.decode(stream):
                h, w = f.height, f.width
                if (
                    not rgb
                    and f.format.name == "yuv420p"
                    and h % 2 == 0
                    and w % 2 == 0
                    and f.color_range in _BT601_RANGES
                    and f.colorspace in _BT601_SPACES
                ):
                    py, pu, pv = f.planes
                    planes.append((_plane(py, h, w), _plane(pu, h // 2, w // 2), _plane(pv, h // 2, w // 2)))
                    continue
                if planes:  # the format changed mid-stream: convert what was collected the same way
                    rgb.extend(yuv420_to_rgb(*map(np.stack, zip(*planes))).permute(1, 2, 3, 0).numpy())
                    planes = []
                rgb.append(_reformatter().reformat(f, format="rgb24").to_ndarray())
            if planes:
                return yuv420_to_rgb(*(np.stack(p) for p in zip(*planes)))
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise ValueError(f"cannot decode video ({getattr(err, 'strerror', None) or err})") from err
    if not rgb:
        raise ValueError("video has no decodable frames")
    return torch.from_numpy(np.stack(rgb)).permute(3, 0, 1, 2).contiguous()


def decode_mp4(data: bytes) -> np.ndarray:
    """Decode an in-memory video (any container/codec PyAV reads; mp4/H.264 here) to ``uint8 [T, H, W, 3]``."""
    return np.ascontiguousarray(decode_clip(data).permute(1, 2, 3, 0).numpy())


def encode_mp4(frames: np.ndarray, *, fps: int = 8, crf: int = 18, preset: str = "veryfast") -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` frames as H.264 mp4 bytes (yuv420p, so H and W must be even).

    Reproducible: one x264 thread, x264's ``cpu-independent`` mode and no wall-clock timestamps, so the
    same frames give the same bytes.
    """
    import av

    frames = _check_rgb(frames, ndim=4)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs even height and width, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # one thread and cpu-independent=1: without them the same frames sometimes give different bytes
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": "cpu-independent=1"}
        stream.codec_context.thread_count = 1
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """Decode ``.npy`` bytes holding ``uint8 [T, H, W, 3]`` (``[H, W, 3]`` is read as one frame)."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises several types for bad headers
        raise ValueError(f"cannot decode npy ({err})") from err
    return as_frames(arr, "npy clip")


def as_frames(arr: np.ndarray, what: str) -> np.ndarray:
    """Check uint8 ``[H, W, 3]`` / ``[T, H, W, 3]`` pixels and return them as ``[T, H, W, 3]``."""
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{what} must be [H, W, 3] or [T, H, W, 3], got shape {list(arr.shape)}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 pixels, got {arr.dtype}")
    return arr


def encode_npy(frames: np.ndarray) -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` as ``.npy`` bytes (lossless)."""
    buf = io.BytesIO()
    np.save(buf, _check_rgb(frames, ndim=4), allow_pickle=False)
    return buf.getvalue()


def decode_media(data: bytes, ext: str) -> torch.Tensor:
    """Decode a member by extension to ``uint8 [3, T, H, W]`` (images give T = 1; images and npy clips are
    permuted views, mp4 clips contiguous)."""
    ext = ext.lower()
    if ext in IMAGE_EXTS:
        return decode_image(data).unsqueeze(1)
    if ext == "mp4":
        return decode_clip(data, "mp4")
    if ext == "npy":
        arr = decode_npy(data)
    else:
        raise ValueError(f"unknown extension {ext!r}; expected one of {IMAGE_EXTS + CLIP_EXTS}")
    # [T, H, W, 3] -> [3, T, H, W] (a view)
    return torch.from_numpy(arr).permute(3, 0, 1, 2)


def encode_media(arr: np.ndarray, ext: str, *, quality: int = 95, fps: int = 8, crf: int = 18) -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` (or ``[H, W, 3]`` for images) by extension."""
    ext = ext.lower()
    if ext in IMAGE_EXTS:
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"an image file holds one frame, got {arr.shape[0]} frames for .{ext}")
            arr = arr[0]
        return encode_image(arr, ext, quality=quality)
    if arr.ndim == 3:
        arr = arr[None]
    if ext == "mp4":
        return encode_mp4(arr, fps=fps, crf=crf)
    if ext == "npy":
        return encode_npy(arr)
    raise ValueError(f"unknown extension {ext!r}; expected one of {IMAGE_EXTS + CLIP_EXTS}")


def read_video_file(path: str | Path, *, short_side: int | None = None, max_frames: int | None = None) -> np.ndarray:
    """Decode a video file to ``uint8 [T, H, W, 3]``, optionally resized so its short side is ``short_side``.

    Resizing happens in swscale (area filter) during RGB conversion, so large sources stay cheap.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    reformat = _reformatter().reformat
    frames = []
    try:
        with av.open(str(path)) as container:
            for f in container.decode(video=0):
                if short_side is not None:
                    scale = short_side / min(f.width, f.height)
                    w = max(2, int(round(f.width * scale / 2)) * 2)
                    h = max(2, int(round(f.height * scale / 2)) * 2)
                    f = reformat(f, width=w, height=h, format="rgb24", interpolation="AREA")
                else:
                    f = reformat(f, format="rgb24")
                frames.append(f.to_ndarray())
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.FFmpegError as err:
        raise ValueError(f"cannot decode video {path}: {err}") from err
    if not frames:
        raise ValueError(f"video {path} has no decodable frames")
    return np.stack(frames)


def _check_rgb(arr: np.ndarray, *, ndim: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim != ndim or arr.shape[-1] != 3:
        want = "[H, W, 3]" if ndim == 3 else "[T, H, W, 3]"
        raise ValueError(f"expected RGB array {want}, got shape {list(arr.shape)}")
    return np.ascontiguousarray(arr)
