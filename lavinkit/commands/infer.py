"""``lavinkit infer``: in-context inference from files, like the official ``inference.py``.

    lavinkit infer --vae stvae.safetensors --dit jdit.safetensors \\
        --task-folder out/tasks/colorization --query photo.png --num-pairs 4 --seed 0 --out results/

* ``--query`` is an image (png/jpg/webp/tiff), a clip (mp4 and other video files, or npy ``uint8 [T, H, W, 3]``),
  or a folder of those (batch mode: every query in name order).
* ``--task-folder`` holds example pairs ``NAME_input.EXT`` / ``NAME_target.EXT`` (images or clips).
* ``--num-pairs`` pairs are drawn SEEDED and WITHOUT replacement (the official draws with replacement and
  unseeded). Query number ``i`` (name order) uses seed ``seed + i`` for both the pair choice and the noise,
  so one query with ``--seed S`` gives what the Python pipeline gives with ``seed=S``. A query that lies in
  the task folder is never used as its own example.
* Images and clips are resized to ``--size HxW`` (multiples of 16; default 512x512) with bicubic + antialias
  as the official code does; clips are cut to the largest ``1 + 4k`` frames (at most ``--max-frames``).
* Outputs per query ``Q`` in ``--out``: ``Q_result.png`` (``Q_result.mp4`` for clips), ``Q_grid.png``
  (``.mp4``) = query | input/target pairs | result side by side, and ``Q.json`` recording the chosen pair
  names, seeds and settings. The chosen pairs are also printed.

Held-out evaluation over several tasks: leave out ``--query`` and point ``--task-folder`` at a folder of
task folders (e.g. ``demo_data/tasks``). For every task (``--tasks`` to pick some), the last
``--queries-per-task`` pairs by name are the queries, never used as examples; their targets are shown next to
the results, and ``results_grid.png`` in ``--out`` stacks one row per query: query | pairs | result | target.

``--vae`` / ``--dit`` take lavinkit weights files or training checkpoints, or official files (``stvae.pt``,
``lavin_dit.safetensors``). ``--checkpoint`` is a J-DiT training checkpoint (``JDiTModule`` ``.ckpt``): the
J-DiT comes from it and, unless ``--vae`` is given, the ST-VAE path recorded in its hyper-parameters.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lavinkit.data.media import IMAGE_EXTS, VIDEO_FILE_EXTS

# the query and example files infer and eval read: images, npy frame arrays, video files
CLIP_EXTS = ("npy", *VIDEO_FILE_EXTS)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class InferError(ValueError):
    """A user error of ``lavinkit infer`` (message names the file or option)."""


@dataclass
class Media:
    """A loaded image or clip: ``pixels`` float ``[1, 3, T, H, W]`` in [-1, 1], ``uint8`` ``[T, H, W, 3]``."""

    path: Path
    pixels: torch.Tensor
    uint8: np.ndarray

    @property
    def is_clip(self) -> bool:
        return self.pixels.shape[2] > 1


def parse_size(size: str) -> tuple[int, int]:
    """``"HxW"`` (or one number for a square) -> ``(H, W)``, both positive multiples of 16."""
    try:
        parts = [int(p) for p in str(size).lower().replace("*", "x").split("x")]
    except ValueError:
        raise InferError(f"--size {size!r}: expected HxW, e.g. 512x512") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(p <= 0 or p % 16 for p in parts):
        raise InferError(f"--size {size!r}: height and width must be positive multiples of 16 (VAE 8 x patch 2)")
    return parts[0], parts[1]


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def load_media(path: Path, size: tuple[int, int], max_frames: int | None = None) -> Media:
    """Read an image or clip as displayed (EXIF orientation, video display matrix: :mod:`lavinkit.data.media`),
    resize (bicubic + antialias, as official) and scale to [-1, 1]."""
    from lavinkit.data import media

    if not path.is_file():
        raise InferError(f"no such file: {path}")
    ext = _ext(path)
    try:
        if ext in IMAGE_EXTS:
            frames = media.decode_image(path.read_bytes())[None]  # [1, 3, H, W] uint8
        elif ext == "npy":
            frames = torch.from_numpy(media.decode_npy(path.read_bytes())).permute(0, 3, 1, 2)
        elif ext in CLIP_EXTS:
            frames = torch.from_numpy(media.read_video_file(path, max_frames=max_frames)).permute(0, 3, 1, 2)
        else:
            raise InferError(f"{path}: unsupported file type .{ext}; images: {IMAGE_EXTS}, clips: {CLIP_EXTS}")
    except InferError:
        raise
    except (ValueError, OSError) as err:
        raise InferError(f"{path}: cannot read ({err})") from err
    pixels, uint8 = prepare_frames(frames, size, max_frames)
    return Media(path, pixels, uint8)


def prepare_frames(frames: torch.Tensor, size: tuple[int, int],
                   max_frames: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Decoded frames -> model input: cut to the largest 1 + 4k frames (at most ``max_frames``), resize.

    Args:
        frames: uint8 ``[T, 3, H, W]``.
        size: ``(H, W)`` output size; bicubic + antialias, as the official code resizes.

    Returns:
        ``(pixels, uint8)``: float ``[1, 3, T', H, W]`` in [-1, 1] and the resized frames uint8 ``[T', H, W, 3]``.
    """
    from torchvision.transforms.functional import InterpolationMode, resize

    if max_frames is not None:
        frames = frames[:max_frames]
    frames = frames[: 1 + 4 * ((frames.shape[0] - 1) // 4)]  # largest 1 + 4k frames
    frames = resize(frames.contiguous(), list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    pixels = (frames.float() / 255 - 0.5) * 2  # [T, 3, H, W]
    return pixels.permute(1, 0, 2, 3)[None].contiguous(), frames.permute(0, 2, 3, 1).numpy()


def find_pairs(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``NAME -> (NAME_input.EXT, NAME_target.EXT)`` for a task folder; unpaired files are an error naming them."""
    if not folder.is_dir():
        raise InferError(f"--task-folder {folder}: no such directory")
    inputs: dict[str, Path] = {}
    targets: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or _ext(path) not in IMAGE_EXTS + CLIP_EXTS:
            continue
        stem = path.stem
        for suffix, table in (("_input", inputs), ("_target", targets)):
            if stem.endswith(suffix):
                name = stem[: -len(suffix)]
                if name in table:
                    raise InferError(f"--task-folder {folder}: two {suffix[1:]} files for {name!r}: "
                                     f"{table[name].name} and {path.name}")
                table[name] = path
    unpaired = sorted(p.name for n, p in {**inputs, **targets}.items() if (n in inputs) != (n in targets))
    if unpaired:
        raise InferError(f"--task-folder {folder}: files without a matching _input/_target partner: {unpaired}")
    return {name: (inputs[name], targets[name]) for name in sorted(inputs)}


def find_queries(query: Path) -> list[Path]:
    """One query file, or every image/clip of a folder in name order."""
    if query.is_dir():
        files = sorted(p for p in query.iterdir() if p.is_file() and _ext(p) in IMAGE_EXTS + CLIP_EXTS)
        if not files:
            raise InferError(f"--query {query}: the folder holds no images or clips ({IMAGE_EXTS + CLIP_EXTS})")
        return files
    if not query.is_file():
        raise InferError(f"--query {query}: no such file or directory")
    return [query]


def choose_pairs(pairs: dict[str, tuple[Path, Path]], k: int, seed: int, exclude: str | None,
                 folder: Path) -> list[str]:
    """``k`` pair names drawn seeded and without replacement (``exclude``: the query's own pair name)."""
    names = [n for n in pairs if n != exclude]
    if k < 0:
        raise InferError(f"--num-pairs must be >= 0, got {k}")
    if len(names) < k:
        extra = f" (excluding the query's own pair {exclude!r})" if exclude in pairs else ""
        raise InferError(f"--task-folder {folder}: --num-pairs {k} requested but only {len(names)} pairs available{extra}")
    return random.Random(seed).sample(names, k)


def _query_pair_name(query: Path, folder: Path) -> str | None:
    if query.parent.resolve() == folder.resolve() and query.stem.endswith("_input"):
        return query.stem[: -len("_input")]
    return None


def _grid_frames(columns: list[np.ndarray]) -> np.ndarray:
    """Side-by-side ``uint8 [T, H, sum W, 3]``; shorter columns hold their last frame."""
    frames = max(c.shape[0] for c in columns)
    return np.stack([np.concatenate([c[min(t, c.shape[0] - 1)] for c in columns], axis=1) for t in range(frames)])


def _write(path_stem: Path, frames: np.ndarray, fps: int) -> Path:
    from lavinkit.data import media

    if frames.shape[0] == 1:
        path = path_stem.with_name(path_stem.name + ".png")
        path.write_bytes(media.encode_image(frames[0], "png"))
    else:
        path = path_stem.with_name(path_stem.name + ".mp4")
        path.write_bytes(media.encode_mp4(frames, fps=fps))
    return path


def _checkpoint_vae(checkpoint: Path) -> str:
    """The ST-VAE path a JDiTModule checkpoint records (``checkpoint["lavinkit"]["vae"]`` or ``hparams.vae``)."""
    if not checkpoint.is_file():
        raise InferError(f"--checkpoint {checkpoint}: no such file")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    vae = None
    if isinstance(ckpt, dict):
        vae = (ckpt.get("lavinkit") or {}).get("vae") or (ckpt.get("hyper_parameters") or {}).get("vae")
    if not vae:
        raise InferError(f"--checkpoint {checkpoint}: records no ST-VAE path (lavinkit.vae / hyper_parameters.vae); "
                         "pass --vae")
    return str(vae)


def resolve_model_paths(checkpoint: str | None, dit: str | None, vae: str | None) -> tuple[str, str]:
    """``(dit_path, vae_path)`` from ``--checkpoint`` / ``--dit`` / ``--vae``; the VAE defaults to the one a
    ``--checkpoint`` records. Both files must exist."""
    if checkpoint and dit:
        raise InferError("--checkpoint and --dit both name a J-DiT; pass one of them")
    dit_path = checkpoint or dit
    if not dit_path:
        raise InferError("no J-DiT given: pass --dit (weights) or --checkpoint (training .ckpt)")
    if not Path(dit_path).is_file():
        raise InferError(f"--{'checkpoint' if checkpoint else 'dit'} {dit_path}: no such file")
    vae_path = vae or (_checkpoint_vae(Path(checkpoint)) if checkpoint else None)
    if not vae_path:
        raise InferError("no ST-VAE given: pass --vae")
    if not Path(vae_path).is_file():
        raise InferError(f"--vae {vae_path}{' (recorded in --checkpoint)' if not vae else ''}: no such file")
    return str(dit_path), str(vae_path)


def pipeline_options(args) -> dict:
    """``InContextPipeline`` keyword arguments from the sampling options (``--steps``, ``--grid``, ``--shift``,
    ``--sampler``, ``--guidance-*``, ``--encode-mode``, ``--ensemble-size``, ``--residual-transfer``, ``--device``,
    the dtypes, ``--allow-fp16``)."""
    from lavinkit.flow.grids import OFFICIAL_GRIDS, ShiftedGrid

    if args.steps < 2:
        raise InferError(f"--steps must be >= 2 (grid points), got {args.steps}")
    if args.ensemble_size < 1:
        raise InferError(f"--ensemble-size must be >= 1 (answers averaged per query), got {args.ensemble_size}")
    if args.grid == "official" and args.steps not in OFFICIAL_GRIDS:
        raise InferError(f"--steps {args.steps}: the official grid has {sorted(OFFICIAL_GRIDS)} points only; "
                         "use --grid uniform or --grid shifted for other step counts")
    dtype = lambda name: None if name == "auto" else DTYPES[name]  # noqa: E731
    return dict(
        sampler=args.sampler, num_steps=args.steps,
        grid=ShiftedGrid(args.shift) if args.grid == "shifted" else args.grid,
        guidance_scale=args.guidance_scale, guidance_mode=args.guidance_mode, encode_mode=args.encode_mode,
        ensemble_size=args.ensemble_size, residual_transfer=args.residual_transfer, device=args.device,
        dtype=dtype(args.dtype), encode_dtype=dtype(args.encode_dtype), decode_dtype=dtype(args.decode_dtype),
        allow_fp16=args.allow_fp16,
    )  # fmt: skip


def add_pipeline_arguments(p) -> None:
    """The model and sampling options shared by ``lavinkit infer`` and ``lavinkit eval``."""
    p.add_argument("--vae", type=str | None, default=None, help="ST-VAE weights (lavinkit or official stvae.pt)")
    p.add_argument("--dit", type=str | None, default=None, help="J-DiT weights (lavinkit or official safetensors)")
    p.add_argument("--checkpoint", type=str | None, default=None,
                   help="JDiTModule training checkpoint (.ckpt): J-DiT (+ its recorded ST-VAE unless --vae)")
    p.add_argument("--num-pairs", type=int, default=4, help="example pairs per query (seeded, no replacement)")
    p.add_argument("--steps", type=int, default=20, help="time-grid points (Euler: steps - 1 evaluations)")
    p.add_argument("--grid", type=Literal["official", "uniform", "shifted"], default="official",
                   help="official (20/30/40 steps), uniform or shifted")
    p.add_argument("--shift", type=float, default=3.0, help="shift of the 'shifted' grid")
    p.add_argument("--sampler", type=Literal["euler", "heun"], default="euler")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guidance-mode", type=Literal["auto", "batched", "two_pass"], default="auto",
                   help="auto: one batched forward unless the null context would be padded, else two passes")
    p.add_argument("--encode-mode", type=Literal["sample", "mean"], default="sample",
                   help="posterior sample (official) or mean for the context latents")
    p.add_argument("--ensemble-size", type=int, default=1,
                   help="answers sampled per query from independent noise and averaged (1: one sample)")
    p.add_argument("--residual-transfer", type=bool, default=False,
                   help="add back the detail the ST-VAE drops from the query, as much as the example pairs keep")
    p.add_argument("--size", type=str, default="512x512", help="HxW, multiples of 16")
    p.add_argument("--max-frames", type=int | None, default=None, help="cut clips to at most this many frames")
    p.add_argument("--device", type=str | None, default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", type=Literal["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="J-DiT dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--encode-dtype", type=Literal["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--decode-dtype", type=Literal["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--allow-fp16", type=bool, default=False, help="allow float16 with bfloat16 weights")
    p.add_argument("--no-ema", type=bool, default=False, help="load raw instead of EMA weights from .ckpt files")


@dataclass
class QueryJob:
    """One query to answer: its file, its task folder and pairs, the pair it must not use, its known target."""

    query: Path
    folder: Path
    pairs: dict[str, tuple[Path, Path]]
    exclude: str | None
    target: Path | None = None


def task_folders(root: Path) -> list[Path]:
    """The task folders of a folder of task folders, in name order (``root`` itself when it has no subfolders)."""
    if not root.is_dir():
        raise InferError(f"--task-folder {root}: no such directory")
    return sorted(p for p in root.iterdir() if p.is_dir()) or [root]


def plan_queries(args) -> list[QueryJob]:
    """The queries of a run: ``--query`` files against one task folder, or held-out pairs of every task."""
    root = Path(args.task_folder)
    if args.query is not None:
        pairs = find_pairs(root)
        return [QueryJob(q, root, pairs, _query_pair_name(q, root)) for q in find_queries(Path(args.query))]
    if args.queries_per_task < 1:
        raise InferError(f"--queries-per-task must be >= 1, got {args.queries_per_task}")
    folders = task_folders(root)
    if args.tasks:
        known = {p.name: p for p in folders}
        missing = [t for t in args.tasks if t not in known]
        if missing:
            raise InferError(f"--tasks {missing}: no such task folder in {root} (have {sorted(known)})")
        folders = [known[t] for t in args.tasks]
    jobs = []
    for folder in folders:
        pairs = find_pairs(folder)
        held_out = list(pairs)[-args.queries_per_task:]
        if len(pairs) - len(held_out) < args.num_pairs:
            raise InferError(f"--task-folder {folder}: {len(pairs)} pairs cannot give {len(held_out)} held-out "
                             f"queries and --num-pairs {args.num_pairs} examples")
        pool = {n: p for n, p in pairs.items() if n not in held_out}
        jobs += [QueryJob(pairs[n][0], folder, pool, None, pairs[n][1]) for n in held_out]
    return jobs


def _results_sheet(rows: list[tuple[str, np.ndarray]]) -> bytes:
    """One PNG: a labelled row per query (middle frame of clips), rows padded to the widest."""
    from PIL import Image, ImageDraw

    from lavinkit.data import media

    label_width = 150
    frames = [grid[grid.shape[0] // 2] for _, grid in rows]
    width = max(f.shape[1] for f in frames) + label_width
    height = sum(f.shape[0] for f in frames)
    sheet = np.zeros((height, width, 3), dtype=np.uint8)
    y = 0
    for frame in frames:
        sheet[y : y + frame.shape[0], label_width : label_width + frame.shape[1]] = frame
        y += frame.shape[0]
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    y = 0
    for (label, _), frame in zip(rows, frames):
        draw.text((4, y + frame.shape[0] // 2 - 6), label, fill=(255, 255, 255))
        y += frame.shape[0]
    return media.encode_image(np.asarray(image), "png")


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog="lavinkit infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML/JSON file with any of these options")
    p.add_argument("--query", type=str | None, default=None,
                   help="query image/clip, or a folder of them; omit for held-out queries of every task")
    p.add_argument("--task-folder", type=str, required=True,
                   help="folder of NAME_input.EXT / NAME_target.EXT (without --query: a folder of task folders)")
    p.add_argument("--tasks", type=list[str] | None, default=None,
                   help="without --query: the task folders to use (default: all)")
    p.add_argument("--queries-per-task", type=int, default=1,
                   help="without --query: held-out pairs per task used as queries (the last ones by name)")
    p.add_argument("--out", type=str, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of query i is seed + i (pairs and noise)")
    p.add_argument("--fps", type=int, default=8, help="frame rate of written mp4s")
    p.add_argument("--progress", type=bool, default=True, help="show a progress bar with an ETA")
    p.add_argument("--rounding", type=Literal["round", "truncate"], default="round",
                   help="uint8 conversion of results (truncate = official)")
    add_pipeline_arguments(p)
    return p


def run(args) -> list[dict]:
    """Run inference for every query; returns the per-query records (also written as json)."""
    from lavinkit.pipeline import InContextPipeline

    size = parse_size(args.size)
    if args.max_frames is not None and args.max_frames < 1:
        raise InferError(f"--max-frames must be >= 1, got {args.max_frames}")
    dit_path, vae_path = resolve_model_paths(args.checkpoint, args.dit, args.vae)
    jobs = plan_queries(args)
    # check every pair-count before loading models (fail fast)
    for job in jobs:
        choose_pairs(job.pairs, args.num_pairs, 0, job.exclude, job.folder)

    try:
        pipe = InContextPipeline.from_checkpoints(vae_path, dit_path, use_ema=not args.no_ema,
                                                  **pipeline_options(args))
    except ValueError as err:  # bad model files, fp16 with bf16 weights (see --dtype / --allow-fp16)
        raise InferError(f"cannot build the pipeline from --vae {vae_path} / --dit {dit_path}: {err}") from err
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    records, rows = [], []
    for i, job in enumerate(tqdm(jobs, desc="lavinkit infer", unit="query", disable=not args.progress)):
        seed = args.seed + i
        qpath, folder, pairs = job.query, job.folder, job.pairs
        names = choose_pairs(pairs, args.num_pairs, seed, job.exclude, folder)
        tqdm.write(f"[{i + 1}/{len(jobs)}] {folder.name}/{qpath.name}: pairs {names} (seed {seed})")
        query = load_media(qpath, size, args.max_frames)
        loaded = [(load_media(pairs[n][0], size, args.max_frames), load_media(pairs[n][1], size, args.max_frames))
                  for n in names]  # fmt: skip
        start = time.perf_counter()
        out = pipe(query.pixels, [(a.pixels, b.pixels) for a, b in loaded], seed=seed, output="uint8",
                   rounding=args.rounding)
        seconds = time.perf_counter() - start
        result = out.images[0].permute(1, 2, 3, 0).cpu().numpy()  # [T, H, W, 3] uint8
        stem = qpath.stem
        if args.query is None and not stem.startswith(folder.name):  # keep names unique across tasks
            stem = f"{folder.name}_{stem}"
        result_path = _write(out_dir / f"{stem}_result", result, args.fps)
        columns = [query.uint8] + [m.uint8 for pair in loaded for m in pair] + [result]
        if job.target is not None:
            columns.append(load_media(job.target, size, args.max_frames).uint8)
        grid_path = _write(out_dir / f"{stem}_grid", _grid_frames(columns), args.fps)
        rows.append((folder.name, _grid_frames(columns)))
        record = {
            "query": str(qpath), "task_folder": str(folder), "pairs": names,
            "pair_files": [[str(pairs[n][0]), str(pairs[n][1])] for n in names], "seed": seed,
            "result": str(result_path), "grid": str(grid_path), "size": list(size),
            "frames": int(result.shape[0]), "sampler": args.sampler, "grid_kind": args.grid, "steps": args.steps,
            "nfe": out.nfe, "guidance_scale": args.guidance_scale, "guidance_mode": args.guidance_mode,
            "encode_mode": args.encode_mode, "ensemble_size": args.ensemble_size,
            "residual_transfer": args.residual_transfer, "vae": str(vae_path),
            "dit": str(dit_path),
            "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""), "seconds": round(seconds, 3),
        }  # fmt: skip
        if job.target is not None:
            record["target"] = str(job.target)
        if out.residual_gain is not None:  # how much of the query's ST-VAE residual the example pairs kept (R, G, B)
            record["residual_gain"] = [round(g, 4) for g in out.residual_gain[0].tolist()]
        (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
        details = f", mean of {args.ensemble_size} answers" if args.ensemble_size > 1 else ""
        if "residual_gain" in record:
            details += ", residual gain R/G/B " + "/".join(f"{g:.2f}" for g in record["residual_gain"])
        tqdm.write(f"    -> {result_path} ({out.nfe} evaluations{details}, {seconds:.1f}s)")
        records.append(record)
    if args.query is None:
        sheet = out_dir / "results_grid.png"
        sheet.write_bytes(_results_sheet(rows))
        print(f"results grid (query | pairs | result | target, one row per query): {sheet}", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except (InferError, FileNotFoundError) as err:
        print(f"lavinkit infer: error: {err}", file=sys.stderr)
        return 2
    return 0
