"""``lavinkit bench train``: time a recipe's model as it trains (or samples), on synthetic tensors of its shapes.

The recipe (one or more ``--config`` YAML files, merged in order like ``lavinkit fit``) gives the LightningModule
(``model:``), the precision, gradient clipping and EMA callback (``trainer:``), and the batch shapes (``data:``:
``batch_size``, ``num_context``, ``size``, ``frames``; options below override them). The module is built exactly as
``lavinkit fit`` builds it (so its speed switches apply: ``compile``, activation checkpointing, fused AdamW) and
trained for ``--warmup + --steps`` optimizer steps by a Lightning ``Trainer`` on one device, fed random tensors.
The J-DiT trains on latent batches (no VAE in the step, as with ``lavinkit encode`` shards); the ST-VAE on pixels.

Reported (``--json`` writes the same figures):

* median step time with its spread (10th / 90th percentile, min, max) over the timed steps (and the process CPU
  time per step, the steadier figure on a shared machine), samples/s and
  tokens/s (J-DiT: context + target tokens; ST-VAE: pixels/s instead);
* peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the process's peak resident set size;
* FLOPs per step two ways: ``model_flops`` from the design brief's formula (J-DiT: ``6 N_tok T + 12 L d sum S^2``
  with the last block's context stream reduced to keys and values) and ``counted_flops`` from torch's
  ``FlopCounterMode`` over one extra untimed eager step, with CPU SDPA kernels counted (torch's counter has no
  formula for them);
* achieved FLOP/s; on a GPU the MFU against the device's bf16 dense peak (model FLOPs, design brief s.6); on a CPU
  the ratio to a measured fp32 matmul rate of the same machine (``--matmul_peak``).

``--mode sample`` times inference instead: the J-DiT's guided ODE sampling of the recipe's sampler and guidance
(latency per call and per ODE step), or the ST-VAE's encode + decode of one batch.

    lavinkit bench train --config recipes/jdit/tiny_latents.yaml --steps 10
    lavinkit bench train --config recipes/jdit/jdit_1b.yaml --latent 64 --num_context 4 --batch 1 --json out.json
    lavinkit bench train --config recipes/stvae/tiny_stage1.yaml --mode sample --batch 1
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from lavinkit.bench.flops import flop_counter_mapping, jdit_model_flops, sample_model_flops  # noqa: F401 (re-exported)
from lavinkit.bench.stats import spread
from lavinkit.lit.precision import resolve_cpu_precision

# ----------------------------------------------------------------------------------------------- recipes


def merge_configs(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base`` (mappings merged key by key, anything else replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = value
    return out


def load_recipe(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Read and merge recipe YAML files in order (later files override earlier ones)."""
    import yaml

    recipe: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such recipe file")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: a recipe is a YAML mapping (trainer/model/data), got {type(data).__name__}")
        recipe = merge_configs(recipe, data)
    if "model" not in recipe:
        raise ValueError(f"--config {', '.join(map(str, paths))}: the recipe has no 'model' section")
    return recipe


def _class_name(section: Any) -> str:
    return section.get("class_path", "") if isinstance(section, dict) else ""


def build_module(model_section: dict[str, Any]):
    """Instantiate the recipe's LightningModule the way LightningCLI does (jsonargparse, subclass mode).

    A J-DiT module is built without its ST-VAE (``vae: null``): the benchmark feeds latents. An ST-VAE module is
    built without ``init_from`` weights.
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningModule

    section = json.loads(json.dumps(model_section))  # a plain copy
    init_args = section.setdefault("init_args", {})
    name = _class_name(section).rsplit(".", 1)[-1]
    if name == "JDiTModule":
        init_args["vae"] = None
        init_args["init_weights"] = None
    elif name == "STVAEModule":
        init_args["init_from"] = None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    cfg = parser.parse_object({"model": section})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(cfg).model


def build_strategy(trainer_section: dict[str, Any]):
    """The recipe's ``trainer.strategy`` (a name or ``class_path``/``init_args``) instantiated as LightningCLI does."""
    strategy = trainer_section.get("strategy")
    if strategy is None or isinstance(strategy, str):
        return strategy or "auto"
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Strategy, "strategy", required=True)
    cfg = parser.parse_object({"strategy": json.loads(json.dumps(strategy))})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(cfg).strategy


def build_callbacks(trainer_section: dict[str, Any], keep_ema: bool) -> list:
    """The recipe's ``lavinkit.lit.callbacks.EMA`` callback (its update is part of a training step), if any."""
    from lavinkit.lit.callbacks import EMA

    out = []
    for entry in trainer_section.get("callbacks") or []:
        if keep_ema and _class_name(entry).rsplit(".", 1)[-1] == "EMA":
            out.append(EMA(**(entry.get("init_args") or {})))
    return out


# ----------------------------------------------------------------------------------------------- shapes


def _upper(value: Any, default: int) -> int:
    """Largest value of an int or ``[lo, hi]`` recipe entry."""
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return int(max(value))
    return int(value)


def batch_shape(recipe: dict[str, Any], batch: int | None, num_context: int | None, size: int | None,
                frames: int | None) -> dict[str, int]:
    """``{"batch", "num_context", "size", "frames"}`` of the benchmark batch: options first, then the recipe's
    ``data`` section (``num_context`` at its largest), then defaults (256x256 images, 2 context pairs)."""
    data = (recipe.get("data") or {}).get("init_args") or {}
    video = data.get("video_size") is not None or data.get("frames") is not None
    return {
        "batch": batch if batch is not None else _upper(data.get("batch_size"), 2),
        "num_context": num_context if num_context is not None else _upper(data.get("num_context"), 2),
        "size": size if size is not None else _upper(data.get("size"), 256),
        "frames": frames if frames is not None else (_upper(data.get("frames"), 1) if video else 1),
    }


def latent_frames(frames: int) -> int:
    """Latent frames of a ``1 + 4k``-frame clip (4x temporal compression, first frame kept)."""
    return 1 + (frames - 1) // 4


class SyntheticBatches(torch.utils.data.IterableDataset):
    """Endless in-context batches of random tensors: ``input``/``target`` ``[B, N, C, T, H, W]`` (N = context
    pairs + query), ``latents`` set for latent batches, plus the ``task``/``keys``/``num_context`` entries."""

    def __init__(self, shape: tuple[int, ...], latents: bool, seed: int = 0) -> None:
        self.shape, self.latents, self.seed = tuple(shape), latents, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        b, n = self.shape[:2]
        while True:
            x = torch.randn(self.shape, generator=g)
            y = torch.randn(self.shape, generator=g)
            if not self.latents:
                x, y = x.clamp(-1, 1), y.clamp(-1, 1)
            yield {"input": x, "target": y, "latents": self.latents, "task": ["bench"] * b,
                   "keys": [[f"k{j}" for j in range(n)] for _ in range(b)], "num_context": n - 1}


# ----------------------------------------------------------------------------------------------- peak rate


def matmul_peak_flops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul rate of ``device`` (median of ``repeats`` ``n x n`` GEMMs), FLOP/s."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = []
    for i in range(repeats + 1):
        dt = _timed(lambda: a @ b, device)
        if i:
            times.append(dt)
    return 2.0 * n**3 / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median and spread (p10, p90, min, max, relative interquartile range) of step times in seconds."""
    stats = spread(times)
    return {**{f"{k}_s": stats[k] for k in ("median", "p10", "p90", "min", "max")},
            "rel_iqr": stats["rel_iqr"], "n": stats["n"]}


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak RSS on a CPU (bytes)."""
    if device.type == "cuda":
        return {"peak_memory_bytes": float(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_allocated"}
    import resource

    return {"peak_memory_bytes": float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0,
            "peak_memory_kind": "process_peak_rss"}


# ----------------------------------------------------------------------------------------------- training


def _step_clock(device: torch.device, warmup: int, steps: int, count_flops: bool):
    """A callback that times every training batch (synchronised) and counts FLOPs of the batch after the
    timed ones (eager: ``torch.compiler.set_stance("force_eager")``)."""
    from lightning.pytorch.callbacks import Callback
    from torch.utils.flop_counter import FlopCounterMode

    class StepClock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self._cpu_start = 0.0
            self.counted: float | None = None
            self._stack: contextlib.ExitStack | None = None
            self._start = 0.0
            self._counter: FlopCounterMode | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup + steps and count_flops:
                self._stack = contextlib.ExitStack()
                self._stack.enter_context(torch.compiler.set_stance("force_eager"))
                self._counter = self._stack.enter_context(
                    FlopCounterMode(display=False, custom_mapping=flop_counter_mapping()))
            _sync(device)
            self._start = time.perf_counter()
            self._cpu_start = time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            _sync(device)
            elapsed = time.perf_counter() - self._start
            if self._stack is not None:
                self._stack.close()
                self._stack = None
                self.counted = float(self._counter.get_total_flops())
            elif warmup <= batch_idx < warmup + steps:
                self.times.append(elapsed)
                self.cpu_times.append(time.process_time() - self._cpu_start)

    return StepClock()


def _module_kind(module) -> str:
    name = type(module).__name__
    if hasattr(module, "dit_config"):
        return "jdit"
    if hasattr(module, "vae") and hasattr(module, "adversarial"):
        return "stvae"
    raise ValueError(f"lavinkit bench train: model {name} is neither a J-DiT nor an ST-VAE LightningModule")


def _precision(recipe: dict[str, Any], precision: str | None, device: torch.device) -> str:
    if precision is not None:
        return precision
    value = str(((recipe.get("trainer") or {}).get("precision")) or "32-true")
    if device.type == "cpu" and value in ("16-mixed", "16", "16-true"):
        value = "bf16-mixed"
    # what ``lavinkit fit`` trains with: float32 where this CPU emulates bfloat16 (an explicit --precision is kept)
    resolved, reason = resolve_cpu_precision(value, device.type)
    if reason is not None:
        print(f"lavinkit bench train: {reason}", file=sys.stderr)
    return resolved


def run(
    configs: Sequence[str | Path], mode: str = "train", steps: int = 10, warmup: int = 2, device: str | None = None,
    batch: int | None = None, num_context: int | None = None, size: int | None = None, frames: int | None = None,
    latent: int | None = None, precision: str | None = None, ema: bool = True, count_flops: bool = True,
    matmul_peak: bool = True, threads: int | None = None, strategy: bool = False,
) -> dict[str, Any]:
    """Benchmark the recipe's module; returns the figures (see the module docstring)."""
    if mode not in ("train", "sample"):
        raise ValueError(f"--mode must be 'train' or 'sample', got {mode!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = load_recipe(configs)
    torch.manual_seed(0)
    module = build_module(recipe["model"])
    kind = _module_kind(module)
    shape = batch_shape(recipe, batch, num_context, size, frames)
    prec = _precision(recipe, precision, dev)
    result: dict[str, Any] = {
        "recipe": [str(c) for c in configs], "mode": mode, "model": type(module).__name__, "kind": kind,
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "precision": prec, "torch": torch.__version__,
        "compile": getattr(module, "compile_blocks", None),
    }
    n = shape["num_context"] + 1
    if kind == "jdit":
        cfg = module.dit_config
        lat = latent if latent is not None else max(shape["size"] // 8, cfg.patch_size[0])
        lt = latent_frames(shape["frames"])
        tensor_shape = (shape["batch"], n, cfg.in_channels, lt, lat, lat)
        tokens_per_frame = (lat // cfg.patch_size[0]) * (lat // cfg.patch_size[1])
        context_tokens = (2 * shape["num_context"] + 1) * lt * tokens_per_frame
        target_tokens = lt * tokens_per_frame
        result["shape"] = {**shape, "latent": lat, "latent_frames": lt, "context_tokens": context_tokens,
                           "target_tokens": target_tokens}
        result["params"] = sum(p.numel() for p in module.parameters()) if module.dit is not None else None
    else:
        tensor_shape = (shape["batch"], n, 3, shape["frames"], shape["size"], shape["size"])
        result["shape"] = dict(shape)
    if mode == "train":
        section = (recipe.get("trainer") or {}).get("strategy") if strategy else None
        result["strategy"] = (_class_name(section).rsplit(".", 1)[-1] if isinstance(section, dict)
                              else (section or ("auto" if strategy else None)))
        result.update(_bench_train(module, recipe, tensor_shape, kind, dev, prec, steps, warmup, ema, count_flops,
                                   strategy))
    else:
        result.update(_bench_sample(module, tensor_shape, kind, dev, prec, steps, warmup, count_flops))
    step = result["step"]["median_s"]
    if kind == "jdit":
        samples = shape["batch"]
        tokens = samples * (context_tokens + target_tokens)
        if mode == "train":
            result["model_flops"] = jdit_model_flops(module.dit_config, context_tokens, target_tokens, samples)
        else:
            result["model_flops"] = sample_model_flops(
                module.dit_config, context_tokens, target_tokens, samples, result.get("ode_steps") or 1,
                guided=result.get("guided", False), mode=result.get("guidance_mode"), query_frames=lt,
                tokens_per_frame=tokens_per_frame,
            )
        result["tokens_per_s"] = tokens / step
    else:
        samples = shape["batch"] * (n if getattr(module, "pair_sides", "both") == "target" else 2 * n)
        if mode == "sample":
            samples = shape["batch"] * n
        result["pixels_per_s"] = samples * shape["frames"] * shape["size"] ** 2 / step
    result["samples_per_s"] = samples / step
    flops = result.get("model_flops") or result.get("counted_flops")
    if flops:
        result["achieved_flops_per_s"] = flops / step
    if result.get("counted_flops"):
        result["counted_flops_per_s"] = result["counted_flops"] / step
    if dev.type == "cuda":
        from lavinkit.bench.peaks import peak_flops

        peak = peak_flops(torch.cuda.get_device_name(dev))
        if peak is not None and flops:
            result["peak_flops"] = peak
            result["mfu"] = flops / (step * peak)
    elif matmul_peak:
        peak = matmul_peak_flops(dev)
        result["matmul_peak_flops"] = peak
        if flops:
            result["achieved_over_matmul_peak"] = (flops / step) / peak
    return result


def _bench_train(module, recipe, tensor_shape, kind, dev, prec, steps, warmup, ema, count_flops,
                 use_strategy=False) -> dict[str, Any]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    trainer_section = recipe.get("trainer") or {}
    clock = _step_clock(dev, warmup, steps, count_flops)
    callbacks = [clock, *build_callbacks(trainer_section, ema)]
    total = warmup + steps + (1 if count_flops else 0)
    kwargs: dict[str, Any] = {}
    if trainer_section.get("gradient_clip_val") is not None and module.automatic_optimization:
        kwargs["gradient_clip_val"] = trainer_section["gradient_clip_val"]
    if use_strategy:  # one process with the recipe's strategy (FSDP, FSDP2, DeepSpeed wrapping and precision)
        kwargs["strategy"] = build_strategy(trainer_section)
    trainer = pl.Trainer(
        accelerator=dev.type, devices=[dev.index or 0] if dev.type == "cuda" else 1, precision=prec,
        max_steps=total, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
        default_root_dir=None, **kwargs,
    )
    data = DataLoader(SyntheticBatches(tensor_shape, latents=kind == "jdit"), batch_size=None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    first = time.perf_counter()
    trainer.fit(module, train_dataloaders=data)
    wall = time.perf_counter() - first
    if len(clock.times) < steps:
        raise RuntimeError(
            f"lavinkit bench train: only {len(clock.times)} of {steps} timed steps ran (steps skipped as non-finite?)")
    out: dict[str, Any] = {"step": summarize(clock.times), "step_cpu": summarize(clock.cpu_times), "steps": steps,
                           "warmup": warmup,
                           "fit_wall_s": wall, **peak_memory(dev)}
    if kind == "jdit" and module.dit is not None:
        out["params"] = sum(p.numel() for p in module.dit.parameters())
        out["trainable_params"] = sum(p.numel() for p in module.dit.parameters() if p.requires_grad)
    else:
        out["params"] = sum(p.numel() for p in module.vae.parameters())
    if clock.counted is not None:
        out["counted_flops"] = clock.counted
    return out


def _bench_sample(module, tensor_shape, kind, dev, prec, steps, warmup, count_flops) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    module.configure_model() if kind == "jdit" else None
    module.to(dev).eval()
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if prec.startswith("bf16")
                else contextlib.nullcontext())
    b, n, c, t, h, w = tensor_shape
    g = torch.Generator().manual_seed(0)
    if kind == "jdit":
        # context [B, C, (2k+1) t, h, w]: k pairs then the query; one answer of t frames
        context = torch.randn(b, c, (2 * n - 1) * t, h, w, generator=g).to(dev)
        answer = torch.Size((b, c, t, h, w))

        def call():
            with autocast, torch.no_grad():
                return module.sample(context, answer, generator=torch.Generator().manual_seed(1))

        num_steps = int(getattr(module.sampler, "num_steps", 0) or 0)
        guided = float(getattr(module.guidance, "scale", 1.0)) != 1.0
        mode = module.guidance.resolve(context.shape[2], t, t) if guided else None  # "auto" -> the mode it runs
        extra = {"ode_steps": num_steps, "guided": guided, "guidance_mode": mode if guided else None}
    else:
        x = torch.rand(b * n, 3, t, h, w, generator=g).mul(2).sub(1).to(dev)

        def call():
            with autocast, torch.no_grad():
                return module.vae.decode(module.vae.encode(x).mode())

        extra = {}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(warmup + steps):
        dt = _timed(call, dev)
        if i >= warmup:
            times.append(dt)
    out: dict[str, Any] = {"step": summarize(times), "steps": steps, "warmup": warmup, **peak_memory(dev), **extra}
    if kind == "jdit" and extra.get("ode_steps"):
        out["per_ode_step_s"] = out["step"]["median_s"] / extra["ode_steps"]
    if count_flops:
        with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False,
                                                                       custom_mapping=flop_counter_mapping()) as fc:
            call()
        out["counted_flops"] = float(fc.get_total_flops())
    return out


# ----------------------------------------------------------------------------------------------- CLI


def build_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lavinkit bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=str, required=True,
                        help="recipe YAML; repeat to merge several in order (e.g. a J-DiT recipe, then recipes/trainer/X.yaml)")
    parser.add_argument("--mode", type=str, default="train", help="train (optimizer steps) or sample (inference)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (train) or calls (sample)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", type=str | None, default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    parser.add_argument("--batch", type=int | None, default=None, help="samples per step (default: data.batch_size)")
    parser.add_argument("--num-context", "--num_context", type=int | None, default=None,
                        help="context pairs (default: the largest of data.num_context)")
    parser.add_argument("--size", type=int | None, default=None, help="pixel height = width (default: data.size or 256)")
    parser.add_argument("--frames", type=int | None, default=None, help="pixel frames, 1 + 4k (default: data.frames or 1)")
    parser.add_argument("--latent", type=int | None, default=None, help="J-DiT latent height = width (default: size / 8)")
    parser.add_argument("--precision", type=str | None, default=None, help="override trainer.precision")
    parser.add_argument("--ema", type=bool, default=True, help="keep the recipe's EMA callback in the step")
    parser.add_argument("--count-flops", "--count_flops", type=bool, default=True, help="count FLOPs over one extra eager step")
    parser.add_argument("--matmul-peak", "--matmul_peak", type=bool, default=True, help="on a CPU, measure the fp32 matmul rate")
    parser.add_argument("--threads", type=int | None, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--strategy", type=bool, default=False,
                        help="train with the recipe's trainer.strategy in one process (default: none, one device)")
    parser.add_argument("--json", type=str | None, default=None, help="also write the figures to this JSON file")
    return parser


def format_result(result: dict[str, Any]) -> str:
    """Human-readable summary of :func:`run`'s figures."""
    s = result["step"]
    what = "train step" if result["mode"] == "train" else "sample call"
    lines = [
        f"{result['model']} ({result['kind']}) on {result['device_name']}, {result['threads']} threads, "
        f"precision {result['precision']}, compile {result['compile']}, strategy {result.get('strategy')}",
        f"shape: {result['shape']}",
        f"{what}: median {s['median_s'] * 1e3:.1f} ms (p10 {s['p10_s'] * 1e3:.1f}, p90 {s['p90_s'] * 1e3:.1f}, "
        f"min {s['min_s'] * 1e3:.1f}, max {s['max_s'] * 1e3:.1f}, rel. IQR {s['rel_iqr']:.3f}, n={s['n']})",
        f"samples/s: {result['samples_per_s']:.2f}",
    ]
    if "step_cpu" in result:
        c = result["step_cpu"]
        lines.insert(3, f"  process CPU time per step: median {c['median_s'] * 1e3:.1f} ms (p10 {c['p10_s'] * 1e3:.1f}, "
                        f"p90 {c['p90_s'] * 1e3:.1f}); steadier than wall time on a shared machine")
    if "tokens_per_s" in result:
        lines.append(f"tokens/s: {result['tokens_per_s']:.0f}")
    if "pixels_per_s" in result:
        lines.append(f"pixels/s: {result['pixels_per_s']:.3e}")
    if "per_ode_step_s" in result:
        lines.append(f"per ODE step: {result['per_ode_step_s'] * 1e3:.1f} ms ({result['ode_steps']} steps)")
    lines.append(f"peak memory ({result['peak_memory_kind']}): {result['peak_memory_bytes'] / 2**20:.0f} MiB")
    if result.get("model_flops"):
        lines.append(f"model FLOPs/step: {result['model_flops']:.3e}")
    if result.get("counted_flops"):
        lines.append(f"counted FLOPs/step (incl. CPU SDPA): {result['counted_flops']:.3e}")
    if result.get("achieved_flops_per_s"):
        lines.append(f"achieved FLOP/s: {result['achieved_flops_per_s']:.3e}")
    if "mfu" in result:
        lines.append(f"MFU (bf16 peak {result['peak_flops']:.3e}): {result['mfu']:.3f}")
    if "achieved_over_matmul_peak" in result:
        lines.append(f"of measured fp32 matmul rate ({result['matmul_peak_flops']:.3e}): "
                     f"{result['achieved_over_matmul_peak']:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    configs, rest = [], []
    i = 0
    while i < len(argv):  # every --config X (or --config=X), in order; the rest goes to the parser
        if argv[i] == "--config" and i + 1 < len(argv):
            configs.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith("--config="):
            configs.append(argv[i].split("=", 1)[1])
        else:
            rest.append(argv[i])
        i += 1
    parser = build_parser()
    args = parser.parse_args(rest + (["--config", configs[-1]] if configs else []))
    try:
        result = run(
            configs, mode=args.mode, steps=args.steps, warmup=args.warmup, device=args.device, batch=args.batch,
            num_context=args.num_context, size=args.size, frames=args.frames, latent=args.latent,
            precision=args.precision, ema=args.ema, count_flops=args.count_flops, matmul_peak=args.matmul_peak,
            threads=args.threads, strategy=args.strategy,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"lavinkit bench train: {err}", file=sys.stderr)
        return 2
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


__all__ = ["jdit_model_flops", "flop_counter_mapping", "load_recipe", "run", "summarize"]
