"""``evaluate``: score an in-context model per task against the identity baseline, the VAE ceiling and a
context swap."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lavinkit.evaluation import metrics
from lavinkit.evaluation.data import EvalError, EvalTask, tasks_from_folders, tasks_from_shards, to_pixels
from lavinkit.evaluation.references import REFERENCES, reference_answer
from lavinkit.evaluation.report import EvalReport, GridRow, TaskReport

__all__ = ["check_pipeline", "default_partners", "evaluate", "load_pipeline", "model_paths"]

KIND_NAMES = {"jdit": "a J-DiT", "stvae": "an ST-VAE"}
SEED_STREAM = "lavinkit-eval"
SWAP_STREAM = "lavinkit-eval-swap"


def _one_line(err: BaseException, limit: int = 300) -> str:
    """First line of an error message, shortened (strict-load errors list hundreds of keys)."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stored_kind(path: Path, role: str) -> str | None:
    """The model kind a lavinkit file records (``"jdit"`` / ``"stvae"``); ``None`` for other (official) files."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("lavinkit_kind")
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged headers
            raise EvalError(f"{role} {path}: cannot read ({_one_line(err)})") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and mmap errors all mean "not a readable checkpoint"
        raise EvalError(f"{role} {path}: cannot read ({_one_line(err)})") from None
    block = checkpoint.get("lavinkit") if isinstance(checkpoint, dict) else None
    return block.get("kind") if isinstance(block, dict) else None


def check_pipeline(pipe, dit: str = "the J-DiT", vae: str = "the ST-VAE") -> None:
    """Refuse a VAE whose latent channels differ from the J-DiT's ``in_channels`` (the labels name the files)."""
    channels = getattr(getattr(pipe.vae, "config", None), "latent_channels", None)
    expected = getattr(getattr(pipe.dit, "config", None), "in_channels", None)
    if channels is not None and expected is not None and channels != expected:
        raise EvalError(f"ST-VAE {vae} makes {channels}-channel latents but J-DiT {dit} expects "
                        f"in_channels={expected}; pass the ST-VAE the J-DiT was trained with (--vae)")


def model_paths(dit: str | Path, vae: str | Path | None = None) -> tuple[str, str]:
    """``(dit, vae)`` paths, both existing; ``vae=None`` takes the ST-VAE a training checkpoint records."""
    from lavinkit.commands.infer import InferError, resolve_model_paths

    is_weights = Path(dit).suffix == ".safetensors"
    try:
        return resolve_model_paths(None if is_weights else str(dit), str(dit) if is_weights else None,
                                   str(vae) if vae is not None else None)
    except InferError as err:
        raise EvalError(str(err)) from None


def load_pipeline(dit: str | Path, vae: str | Path | None = None, *, use_ema: bool = True, **kwargs: Any):
    """An ``InContextPipeline`` from a J-DiT file and an ST-VAE, checked for the evaluation.

    Args:
        dit: a ``JDiTModule`` training checkpoint (``.ckpt``), a lavinkit J-DiT weights file or an official one.
        vae: ST-VAE weights; default: the path a training checkpoint records (as ``lavinkit infer --checkpoint``).
        kwargs: ``InContextPipeline`` options (``num_steps``, ``guidance_scale``, ``encode_mode``, ``device``, ...).

    Raises:
        EvalError: a missing file, a file of the wrong kind, or latent channels that do not match.
    """
    from lavinkit.pipeline import InContextPipeline

    dit_path, vae_path = model_paths(dit, vae)
    for role, path, want in (("J-DiT", dit_path, "jdit"), ("ST-VAE", vae_path, "stvae")):
        kind = _stored_kind(Path(path), role)
        if kind is not None and kind != want:
            raise EvalError(f"{role} {path}: holds {KIND_NAMES.get(kind, repr(kind))} model, not {KIND_NAMES[want]}")
    try:
        pipe = InContextPipeline.from_checkpoints(vae_path, dit_path, use_ema=use_ema, **kwargs)
    except (ValueError, KeyError, RuntimeError) as err:
        raise EvalError(f"cannot build the pipeline from ST-VAE {vae_path} and J-DiT {dit_path}: "
                        f"{_one_line(err)}") from None
    check_pipeline(pipe, dit_path, vae_path)
    return pipe


def default_partners(tasks: Sequence[EvalTask]) -> dict[str, str | None]:
    """Swap partner of every task: among the ``n`` tasks of its modality (in the given order), task ``i`` pairs with
    task ``(i + n // 2) % n``; a task alone in its modality has none."""
    out: dict[str, str | None] = {}
    for modality in dict.fromkeys(t.modality for t in tasks):
        group = [t.name for t in tasks if t.modality == modality]
        n = len(group)
        for i, name in enumerate(group):
            out[name] = group[(i + n // 2) % n] if n > 1 else None
    return out


def _unit(frames: np.ndarray) -> Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[1, 3, T, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 255


def _middle(x: Tensor) -> Tensor:
    """``[1, 3, T, H, W]`` -> ``[3, H, W]``: the middle frame, for the grid."""
    return x[0, :, x.shape[2] // 2].detach().float().cpu()


def _parse_size(size: str | Sequence[int]) -> tuple[int, int]:
    from lavinkit.commands.infer import InferError, parse_size

    if isinstance(size, str):
        try:
            return parse_size(size)
        except InferError as err:
            raise EvalError(str(err)) from None
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise EvalError(f"--size {h}x{w}: height and width must be positive multiples of 16 (VAE 8 x patch 2)")
    return h, w


def _resolve_tasks(available: dict[str, EvalTask], tasks: Sequence[str] | None, where: str) -> list[str]:
    if not tasks:
        return list(available)
    missing = [t for t in tasks if t not in available]
    if missing:
        raise EvalError(f"--tasks {missing}: no such task in {where} (available: {list(available)})")
    if len(set(tasks)) != len(tasks):
        raise EvalError(f"--tasks {list(tasks)}: a task is named twice")
    return list(tasks)


def _resolve_partners(available: dict[str, EvalTask], selected: list[str],
                      swap_with: Mapping[str, str] | None, where: str) -> dict[str, str | None]:
    partners = default_partners([available[t] for t in selected])
    for task, partner in (swap_with or {}).items():
        if task not in selected:
            raise EvalError(f"--swap-with {task}: {partner}: {task!r} is not an evaluated task ({selected})")
        if partner not in available:
            raise EvalError(f"--swap-with {task}: {partner}: no task {partner!r} in {where} "
                            f"(available: {list(available)})")
        if partner == task:
            raise EvalError(f"--swap-with {task}: {partner}: a task cannot be its own swap partner")
        if available[partner].modality != available[task].modality:
            raise EvalError(f"--swap-with {task}: {partner}: {task} is {available[task].modality} and {partner} "
                            f"is {available[partner].modality}; the swap needs pairs of the same kind")
        partners[task] = partner
    return partners


def _check_counts(task: EvalTask, num_pairs: int, queries: int) -> None:
    if len(task.names) < num_pairs + queries:
        raise EvalError(f"task {task.name} ({task.where}): {len(task.names)} pairs cannot give {queries} "
                        f"queries and --num-pairs {num_pairs} examples (needs {num_pairs + queries})")


@torch.no_grad()
def _baselines(pipe, query: Tensor, target: Tensor, lpips) -> dict[str, Any]:
    """Seed-independent numbers of one query: the identity baseline and the VAE ceiling (posterior mean).

    Args:
        query, target: ``[1, 3, T, H, W]`` in [0, 1].

    Returns:
        metrics plus ``"latent"`` (target's normalised posterior mean ``[1, C, t, h, w]``) and ``"ceiling"``
        (its decode in [0, 1]).
    """
    shape = pipe.vae.config.latent_shape(*target.shape[2:])
    # zero posterior noise: the mean in either encode mode, so the ceiling does not depend on the seed
    latent = pipe.encode([target * 2 - 1], posterior_eps=torch.zeros(1, *shape)).cpu()
    ceiling = (pipe.decode(latent) / 2 + 0.5).clamp(0, 1).cpu()
    out = {"latent": latent, "ceiling": ceiling,
           "identity_psnr": metrics.psnr(query, target), "identity_ssim": metrics.ssim(query, target),
           "ceiling_psnr": metrics.psnr(ceiling, target), "ceiling_ssim": metrics.ssim(ceiling, target)}
    if lpips is not None:
        out.update(identity_lpips=lpips(query, target), ceiling_lpips=lpips(ceiling, target))
    return out


def evaluate(
    model,
    *,
    task_folder: str | Path | None = None,
    shards: str | Sequence[str] | None = None,
    vae: str | Path | None = None,
    tasks: Sequence[str] | None = None,
    num_pairs: int = 4,
    queries_per_task: int = 1,
    seeds: Sequence[int] = (0,),
    size: str | Sequence[int] = (512, 512),
    max_frames: int | None = None,
    swap_with: Mapping[str, str] | None = None,
    lpips_weights: str | Path | None = None,
    lpips_net: str = "alex",
    out: str | Path | None = None,
    progress: bool = True,
    use_ema: bool = True,
    **pipeline_kwargs: Any,
) -> EvalReport:
    """Evaluate an in-context model per task on held-out queries.

    For every task, the last ``queries_per_task`` pairs (by name / key) are queries, never examples. For every
    query and seed, ``num_pairs`` example pairs are drawn from the other pairs without replacement, seeded by
    ``derive_seed("lavinkit-eval", seed, task, query)``, which also seeds the pipeline's noise. Scored, on
    ``[0, 1]`` pixels at ``size`` (clips over all frames):

    * ``psnr`` / ``ssim`` (/ ``lpips``): the prediction vs the target; ``latent_mse``: its latent vs the target's
      normalised posterior mean;
    * ``identity_*``: the query returned unchanged vs the target (the baseline to beat);
    * ``ceiling_*``: the ST-VAE reconstruction of the target (posterior mean), the best a decoded answer can be;
    * ``swap_*``: the prediction for the same query and noise with example pairs of the partner task B
      (:func:`default_partners`, or ``swap_with``). ``swap_shift_db = PSNR(swapped, ref_B) -
      PSNR(prediction, ref_B)`` with ``ref_B`` B's reference answer for the query
      (:mod:`lavinkit.evaluation.references`; ``None`` without one); ``swap_change_psnr`` = PSNR(swapped,
      prediction) and ``swap_abs_change`` = mean |swapped - prediction| (0..255) are always reported.

    Args:
        model: an ``InContextPipeline`` (notebooks: already loaded), or a J-DiT checkpoint / weights path.
        task_folder: a folder of task folders (``NAME_input.EXT`` / ``NAME_target.EXT``, images or clips).
        shards: pair shards (urls, a folder of shards or a glob); exactly one of ``task_folder`` / ``shards``.
        vae: ST-VAE for a ``model`` path (default: the one a training checkpoint records).
        tasks: tasks to evaluate, in this order (default: all, sorted).
        num_pairs: example pairs per query (>= 1).
        queries_per_task: held-out queries per task.
        seeds: each seed draws its own example pairs and noise.
        size: ``(H, W)`` or ``"HxW"``, multiples of 16; pairs are resized as ``lavinkit infer --size`` does.
        max_frames: clips are cut to at most this many frames (then to ``1 + 4k``).
        swap_with: ``{task: partner}`` overriding the default partners.
        lpips_weights: local torchvision weights of the LPIPS backbone (``lpips_net``); ``None`` skips LPIPS.
        out: folder for ``eval.json``, ``eval.md`` and ``eval_grid.png`` (``None``: nothing written).
        progress: show a tqdm bar.
        use_ema, pipeline_kwargs: for a ``model`` path, passed to :func:`load_pipeline`.

    Returns:
        an :class:`EvalReport`.

    Raises:
        EvalError: bad options or data (too few pairs, unknown task, mixed images and clips, missing file,
            wrong checkpoint kind, latent channels that do not match).
    """
    from tqdm.auto import tqdm

    from lavinkit.seeding import derive_seed

    # ---- options, paths and data first: they fail in seconds, loading a large model does not
    if num_pairs < 1:
        raise EvalError(f"--num-pairs must be >= 1 (the prediction and the swap need example pairs), got {num_pairs}")
    if queries_per_task < 1:
        raise EvalError(f"--queries-per-task must be >= 1, got {queries_per_task}")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise EvalError(f"--seeds must be a non-empty list of distinct integers, got {seeds}")
    if max_frames is not None and max_frames < 1:
        raise EvalError(f"--max-frames must be >= 1, got {max_frames}")
    size = _parse_size(size)
    if (task_folder is None) == (shards is None):
        raise EvalError("pass exactly one data source: --task-folder (a folder of task folders) or --shards")
    from lavinkit.pipeline import InContextPipeline

    given_pipeline = isinstance(model, InContextPipeline)
    if given_pipeline and (vae is not None or pipeline_kwargs):
        raise TypeError("evaluate(): vae and pipeline options apply to a model path, not to a built pipeline")
    dit_label, vae_label = ("<InContextPipeline>",) * 2 if given_pipeline else model_paths(model, vae)
    if task_folder is not None:
        available, where = tasks_from_folders(task_folder), f"--task-folder {task_folder}"
        source = {"task_folder": str(task_folder)}
    else:
        available, where = tasks_from_shards(shards), f"--shards {shards}"
        source = {"shards": shards if isinstance(shards, str) else list(shards)}
    selected = _resolve_tasks(available, tasks, where)
    partners = _resolve_partners(available, selected, swap_with, where)
    for name in dict.fromkeys([*selected, *(p for p in partners.values() if p)]):
        _check_counts(available[name], num_pairs, queries_per_task)
    lpips = None
    if lpips_weights is not None:
        try:
            lpips = metrics.LPIPS(lpips_weights, lpips_net)
        except (FileNotFoundError, ValueError) as err:
            raise EvalError(f"--lpips-weights: {err}") from None

    # ---- the model
    if given_pipeline:
        pipe = model
        check_pipeline(pipe)
    else:
        pipe = load_pipeline(dit_label, vae_label, use_ema=use_ema, **pipeline_kwargs)

    settings = {
        "dit": dit_label, "vae": vae_label, **source, "tasks": selected, "partners": partners,
        "num_pairs": num_pairs, "queries_per_task": queries_per_task, "seeds": seeds, "size": list(size),
        "max_frames": max_frames, "sampler": type(pipe.sampler).__name__, "steps": pipe.sampler.num_steps,
        "grid": repr(pipe.sampler.grid), "guidance_scale": pipe.guidance.scale, "guidance_mode": pipe.guidance.mode,
        "encode_mode": pipe.encode_mode, "ensemble_size": pipe.ensemble_size,
        "residual_transfer": pipe.residual_transfer, "device": str(pipe.device),
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "lpips": {"weights": str(lpips_weights), "net": lpips_net} if lpips is not None else None,
        "seed_rule": f"pipeline seed and example choice: derive_seed({SEED_STREAM!r}, seed, task, query); swap "
                     f"examples: derive_seed({SWAP_STREAM!r}, seed, task, query) (lavinkit.seeding)",
    }  # fmt: skip

    # ---- the loop: task -> query -> seed
    reports: dict[str, TaskReport] = {}
    grid: list[GridRow] = []
    bar = tqdm(total=len(selected) * queries_per_task * len(seeds), desc="lavinkit eval", unit="query",
               disable=not progress)
    load = lambda task, name: task.pair(name, size, max_frames)  # noqa: E731

    for name in selected:
        task = available[name]
        partner = partners[name]
        queries, pool = task.names[-queries_per_task:], task.names[:-queries_per_task]
        ptask = available[partner] if partner else None
        ppool = ptask.names[:-queries_per_task] if ptask else []
        report = TaskReport(name, task.modality, partner, getattr(REFERENCES.get(name), "kind", None),
                            getattr(REFERENCES.get(partner), "kind", None) if partner else None, list(queries))
        bar.set_postfix_str(name)
        for qi, qname in enumerate(queries):
            q_u8, t_u8 = load(task, qname)
            query, target = _unit(q_u8), _unit(t_u8)  # [1, 3, T, H, W] in [0, 1]
            base = _baselines(pipe, query, target, lpips)
            ref_u8 = reference_answer(partner, q_u8) if partner else None
            ref = _unit(ref_u8) if ref_u8 is not None else None
            for si, seed in enumerate(seeds):
                pipe_seed = derive_seed(SEED_STREAM, seed, name, qname)
                chosen = random.Random(pipe_seed).sample(pool, num_pairs)
                examples = [tuple(map(to_pixels, load(task, n))) for n in chosen]
                answer = pipe(to_pixels(q_u8), examples, seed=pipe_seed)
                pred = answer.images.float().cpu()
                record: dict[str, Any] = {
                    "query": qname, "seed": seed, "pipeline_seed": pipe_seed, "pairs": chosen,
                    "psnr": metrics.psnr(pred, target), "ssim": metrics.ssim(pred, target),
                    "latent_mse": float((answer.latent.float().cpu() - base["latent"]).square().mean()),
                    **{k: v for k, v in base.items() if k not in ("latent", "ceiling")},
                }  # fmt: skip
                if lpips is not None:
                    record["lpips"] = lpips(pred, target)
                record["beats_identity_db"] = record["psnr"] - record["identity_psnr"]
                swapped = None
                if ptask is not None:
                    swap_chosen = random.Random(derive_seed(SWAP_STREAM, seed, name, qname)).sample(ppool, num_pairs)
                    swap_examples = [tuple(map(to_pixels, load(ptask, n))) for n in swap_chosen]
                    # the same seed: the same noise, so only the example pairs differ from the prediction
                    swapped = pipe(to_pixels(q_u8), swap_examples, seed=pipe_seed).images.float().cpu()
                    record.update(
                        partner_pairs=swap_chosen, swap_psnr=metrics.psnr(swapped, target),
                        swap_ssim=metrics.ssim(swapped, target),
                        swap_ref_psnr=metrics.psnr(swapped, ref) if ref is not None else None,
                        pred_ref_psnr=metrics.psnr(pred, ref) if ref is not None else None,
                        swap_change_psnr=metrics.psnr(swapped, pred),
                        swap_abs_change=metrics.mean_abs_255(swapped, pred),
                    )  # fmt: skip
                    record["swap_shift_db"] = (record["swap_ref_psnr"] - record["pred_ref_psnr"]
                                               if ref is not None else None)
                    if lpips is not None:
                        record["swap_lpips"] = lpips(swapped, target)
                report.records.append(record)
                if qi == 0 and si == 0:
                    tiles = [_middle(query)]
                    for inp, tgt in examples:
                        tiles += [_middle(inp / 2 + 0.5), _middle(tgt / 2 + 0.5)]
                    tiles += [_middle(pred), _middle(target), _middle(query),
                              _middle(swapped) if swapped is not None else None]
                    grid.append(GridRow(name, partner, tiles))
                bar.update(1)
        reports[name] = report
    bar.close()
    result = EvalReport(settings, reports, grid)
    if out is not None:
        result.write(out)
    return result
