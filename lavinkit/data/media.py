"""In-memory codecs for the members of a pair sample: images (png/jpg/webp/tiff), clips (mp4 via PyAV, npy).

Every decoder returns ``uint8`` RGB; every encoder takes ``uint8`` RGB and returns ``bytes``.

Conversions applied on decode (so any valid file yields 3-channel 8-bit pixels):

- grayscale (``L``, ``1``, ``LA``) -> the gray value replicated to R, G, B;
- palette (``P``) -> its RGB colours;
- RGBA / LA -> alpha dropped (no compositing);
- 16-bit PNG -> scaled to 8 bit with ``round(v * 255 / 65535)``.

Everything is decoded as a viewer displays it:

- images: the EXIF orientation (1-8) that Pillow reads from JPEG, PNG (``eXIf`` chunk or a raw-profile text
  chunk), WebP and TIFF, or from an XMP ``tiff:Orientation``, is applied (``ImageOps.exif_transpose``);
- clips: the display matrix (the mp4/mov ``tkhd`` matrix, Matroska projection or an H.264/HEVC display
  orientation SEI, which FFmpeg hands to every frame) is applied when it is a multiple of 90 degrees, with
  or without a mirror; other angles are refused. A non-square sample aspect ratio (anamorphic video) is
  resampled to square pixels by stretching the width to ``round(W * SAR)`` (what players do), in swscale.

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
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "tif", "tiff")
CLIP_EXTS = ("mp4", "npy")
VIDEO_FILE_EXTS = ("mp4", "avi", "mkv", "mov", "webm", "m4v", "mpg", "mpeg")

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF"}
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


# Pillow decodes these formats as stored and leaves the EXIF orientation to exif_transpose, so their header
# gives the displayed size; others (TIFF, AVIF) may apply it while loading, so their size is read by decoding.
_STORED_AS_CODED = ("JPEG", "MPO", "PNG", "WEBP")


def image_display_size(source: str | Path | bytes) -> tuple[int, int]:
    """``(H, W)`` of an image as displayed, i.e. the shape :func:`decode_image` returns (EXIF orientations 5-8
    swap the stored sides). Reads only the header for png/jpg/webp.

    ``source`` is a path or the file's bytes. Raises ``ValueError`` when it is not a readable image.
    """
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.format not in _STORED_AS_CODED:
                ImageOps.exif_transpose(im, in_place=True)
                return im.height, im.width
            transposed = im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
            return (im.width, im.height) if transposed else (im.height, im.width)
    except UnidentifiedImageError as err:
        raise ValueError("cannot decode image (not a recognised image format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image ({err})") from err


def decode_image(data: bytes) -> torch.Tensor:
    """Decode image bytes (png/jpg/webp/tiff, or any format Pillow reads) to an RGB ``uint8`` tensor ``[3, H, W]``,
    upright: the EXIF orientation is applied, so ``H, W`` are the displayed sides.

    Raises ``ValueError`` when the bytes cannot be decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise ValueError("empty file")
    try:
        im = Image.open(io.BytesIO(data))
        ImageOps.exif_transpose(im, in_place=True)  # loads the pixels; no copy when the orientation is 1
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
    """Encode an RGB ``uint8`` array ``[H, W, 3]`` as ``ext`` (png, jpg/jpeg, webp or tif/tiff).

    PNG is lossless (zlib level 1: ~2x faster to write than 6 for ~10 % more bytes), TIFF lossless (deflate);
    jpg/webp use ``quality``.
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
    elif ext in ("tif", "tiff"):
        im.save(buf, "TIFF", compression="tiff_deflate")
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


# (transpose, flip rows, flip columns), applied in that order: how to turn decoded frames upright
Orientation = tuple[bool, bool, bool]
UPRIGHT: Orientation = (False, False, False)


def display_orientation(matrix) -> Orientation:
    """The transform a player applies for FFmpeg's 3x3 display matrix (9 ints, ``AV_FRAME_DATA_DISPLAYMATRIX``).

    The matrix maps a stored pixel ``(x, y)`` (y down) to ``(a*x + c*y, b*x + d*y)`` with ``a, b, c, d`` =
    ``matrix[0], matrix[1], matrix[3], matrix[4]``: the same reading as ffmpeg's autorotate (``transpose`` /
    ``hflip`` / ``vflip``). Only multiples of 90 degrees, with or without a mirror, have an exact pixel
    transform; other angles raise ``ValueError``.
    """
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    scale = max(abs(a), abs(b), abs(c), abs(d))
    tol = 0.02 * scale  # ~1 degree, the tolerance ffmpeg's autorotate allows
    if scale > 0 and abs(b) <= tol and abs(c) <= tol and abs(a) > tol and abs(d) > tol:
        return False, d < 0, a < 0  # x' = a*x, y' = d*y
    if scale > 0 and abs(a) <= tol and abs(d) <= tol and abs(b) > tol and abs(c) > tol:
        return True, b < 0, c < 0  # x' = c*y, y' = b*x: display rows come from stored columns
    angle = -math.degrees(math.atan2(b, a)) if scale > 0 else float("nan")
    raise ValueError(f"display matrix {list(matrix)} rotates by {angle:.1f} degrees; only multiples of 90 are "
                     "supported (re-encode the video upright)")


def frame_orientation(frame) -> Orientation:
    """The display transform of a decoded PyAV frame (from its ``DISPLAYMATRIX`` side data; none: upright)."""
    for side in frame.side_data:
        if side.type.name == "DISPLAYMATRIX":
            return display_orientation(np.frombuffer(bytes(side), np.int32)[:9].tolist())
    return UPRIGHT


def orient(x: torch.Tensor, orientation: Orientation) -> torch.Tensor:
    """Apply ``orientation`` to ``x`` whose last two dims are (H, W) (``[3, T, H, W]`` here); flips copy."""
    transpose, flip_rows, flip_cols = orientation
    if transpose:
        x = x.transpose(-2, -1)
    dims = [d for d, flip in ((-2, flip_rows), (-1, flip_cols)) if flip]
    return x.flip(dims) if dims else x


def _display_width(stream, width: int) -> int:
    """Width with square pixels: ``round(width * SAR)`` for a non-square sample aspect ratio, else ``width``."""
    sar = stream.sample_aspect_ratio
    if not sar or sar <= 0 or sar == 1:  # None or 0/1 means unknown: square
        return width
    return max(2, int(round(width * sar)))


def decode_clip(data: bytes, container_format: str | None = None) -> torch.Tensor:
    """Decode an in-memory video (any container/codec PyAV reads; mp4/H.264 here) to RGB ``uint8 [3, T, H, W]``
    (contiguous, channel-first: the layout batches use), as displayed: the display matrix is applied and
    non-square pixels are made square (see the module docstring). ``container_format`` (e.g. ``"mp4"``)
    skips container probing.

    Raises ``ValueError`` when the bytes cannot be decoded or the display rotation is not a multiple of 90.
    """
    import av

    if len(data) == 0:
        raise ValueError("empty file")
    planes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rgb: list[np.ndarray] = []
    orientation = None
    try:
        with av.open(io.BytesIO(data), format=container_format) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # short clips: decoder threads cost more than they save
            for f in container.decode(stream):
                h, w = f.height, f.width
                if orientation is None:
                    orientation = frame_orientation(f)
                dw = _display_width(stream, w)
                if (
                    not rgb
                    and dw == w
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
                rgb.append(_reformatter().reformat(f, width=dw, height=h, format="rgb24",
                                                   interpolation="AREA").to_ndarray())
            if planes:
                return orient(yuv420_to_rgb(*(np.stack(p) for p in zip(*planes))), orientation).contiguous()
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise ValueError(f"cannot decode video ({getattr(err, 'strerror', None) or err})") from err
    if not rgb:
        raise ValueError("video has no decodable frames")
    return orient(torch.from_numpy(np.stack(rgb)).permute(3, 0, 1, 2), orientation).contiguous()


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


def read_video_file(path: str | Path, *, short_side: int | None = None, max_frames: int | None = None,
                    fps: float | Fraction | None = None) -> np.ndarray:
    """Decode a video file to ``uint8 [T, H, W, 3]`` as displayed (display matrix applied, square pixels).

    Args:
        short_side: resize so the displayed short side is this (swscale's area filter during the RGB
            conversion, so large sources stay cheap).
        max_frames: stop after this many (output) frames.
        fps: resample to this rate: output frame ``k`` is the frame on screen at ``k / fps`` seconds after
            the first one (frames repeat or drop; nothing is blended), up to the end of the last frame.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    reformat = _reformatter().reformat
    out: list[np.ndarray] = []
    orientation = None

    def rgb(f) -> np.ndarray:
        w, h = _display_width(stream, f.width), f.height
        if short_side is not None:
            scale = short_side / min(w, h)  # the short side is the same before and after a rotation
            w = max(2, int(round(w * scale / 2)) * 2)
            h = max(2, int(round(h * scale / 2)) * 2)
        return reformat(f, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            period = 1 / float(stream.average_rate or stream.guessed_rate or 25)  # of a frame without timestamps
            step = None if fps is None else 1 / float(fps)
            tol = 0.0 if step is None else 0.01 * step  # timestamps are rounded to the stream's time base
            start = shown = shown_rgb = None  # resampling: the frame on screen now, converted when first used
            for i, f in enumerate(container.decode(stream)):
                t = f.time if f.time is not None else i * period
                if start is None:
                    start, orientation = t, frame_orientation(f)
                if step is None:
                    out.append(rgb(f))
                else:
                    # every output instant before this frame's time shows the previous frame
                    while shown is not None and start + len(out) * step < t - tol:
                        shown_rgb = rgb(shown) if shown_rgb is None else shown_rgb
                        out.append(shown_rgb)
                    shown, shown_rgb, shown_time = f, None, t
                if max_frames is not None and len(out) >= max_frames:
                    break
            if step is not None and shown is not None:
                last = float(shown.duration * shown.time_base) if getattr(shown, "duration", None) else period
                while start + len(out) * step < shown_time + last - tol:
                    shown_rgb = rgb(shown) if shown_rgb is None else shown_rgb
                    out.append(shown_rgb)
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise ValueError(f"cannot decode video {path}: {getattr(err, 'strerror', None) or err}") from err
    if not out:
        raise ValueError(f"video {path} has no decodable frames")
    # [T, H, W, 3] -> upright, via the [3, T, H, W] view that orient() expects
    upright = orient(torch.from_numpy(np.stack(out[:max_frames])).permute(3, 0, 1, 2), orientation)
    return upright.permute(1, 2, 3, 0).contiguous().numpy()


@dataclass(frozen=True)
class VideoTiming:
    """Frame count, average frame rate and duration of a video file's first video stream.

    ``frames`` counts the stream's packets (one per frame for the codecs of ``VIDEO_FILE_EXTS``), read
    without decoding; ``duration`` (seconds) is the stream's, else the span of its timestamps plus one frame,
    else ``frames / fps``.
    """

    path: Path
    frames: int
    fps: Fraction | None
    duration: float

    def describe(self) -> str:
        """``"clip_input.mp4: 16 frames at 16 fps (1.00 s)"``."""
        fps = "an unknown rate" if not self.fps else f"{float(self.fps):.4g} fps"
        return f"{self.path}: {self.frames} frames at {fps} ({self.duration:.2f} s)"

    def matches(self, other: VideoTiming) -> bool:
        """Same frame count, frame rates within 0.1 % and durations within half a frame."""
        if self.frames != other.frames or bool(self.fps) != bool(other.fps):
            return False
        if self.fps and abs(self.fps - other.fps) > 1e-3 * max(self.fps, other.fps):
            return False
        half_frame = 0.5 / float(self.fps) if self.fps else 0.5 * self.duration / max(self.frames, 1)
        return abs(self.duration - other.duration) <= half_frame + 1e-6


def video_timing(path: str | Path) -> VideoTiming:
    """Read the :class:`VideoTiming` of a video file (demuxes it; decodes nothing). ``ValueError`` if unreadable."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate
            frames, pts = 0, []
            for packet in container.demux(stream):
                if packet.size:  # the last packet is an empty flush
                    frames += 1
                    if packet.pts is not None:
                        pts.append(packet.pts)
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif len(pts) == frames and frames and fps and stream.time_base:
                # no stream duration (Matroska, WebM): the span of the timestamps plus the last frame's period;
                # the container's duration would also count other streams (audio)
                duration = float((max(pts) - min(pts)) * stream.time_base + 1 / fps)
            else:
                duration = frames / float(fps) if fps else 0.0
    except (av.FFmpegError, IndexError) as err:
        raise ValueError(f"cannot read video {path}: {getattr(err, 'strerror', None) or err}") from err
    return VideoTiming(path, frames, Fraction(fps) if fps else None, duration)


def _check_rgb(arr: np.ndarray, *, ndim: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim != ndim or arr.shape[-1] != 3:
        want = "[H, W, 3]" if ndim == 3 else "[T, H, W, 3]"
        raise ValueError(f"expected RGB array {want}, got shape {list(arr.shape)}")
    return np.ascontiguousarray(arr)
