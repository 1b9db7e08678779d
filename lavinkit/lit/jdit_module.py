"""JDiTModule: conditional flow matching of the J-DiT on in-context pairs (LightningModule, automatic optimisation).

The module only orchestrates. It is built from injected parts:

* ``dit``: a J-DiT preset name (``lavinkit.models.jdit.JDiTConfig.from_name``) plus ``dit_overrides``, or a
  ``JDiTConfig``; the network is built in :meth:`configure_model` (so FSDP / meta-device init apply to it);
* ``vae``: path of ST-VAE weights (``.safetensors`` or a lavinkit ``.ckpt``). The VAE is frozen, in eval mode,
  without gradients and held OUTSIDE the module tree: it is not trained, not sharded, not deep-copied by EMA and
  not written to checkpoints (only its path is). Pixel batches are encoded with it on the fly; with latent
  batches (``batch["latents"]``, from ``lavinkit encode``) it is only used to decode validation samples and may
  be ``None``;
* ``objective``: ``lavinkit.flow.FlowMatchingObjective`` (time sampler + MSE/L1 weights);
* ``optimizer`` / ``lr_scheduler``: callables (``OptimizerCallable`` / ``LRSchedulerCallable``);
* ``sampler`` / ``guidance``: the validation ODE sampler and classifier-free guidance.

EMA is the shared callback ``lavinkit.lit.callbacks.EMA`` in the recipe's trainer callbacks; it averages
:meth:`JDiTModule.ema_target` (the J-DiT) and writes its weights to ``checkpoint["lavinkit"]["ema_state_dict"]``,
so ``JDiT.from_pretrained(ckpt)`` loads them (``use_ema=False``: the raw weights under the ``dit.`` prefix).

Randomness of a training step (context dropout, flow time, noise) comes from generators seeded by
``(seed, global_step, batch_idx, global_rank)``, so a resumed run draws exactly what the uninterrupted run draws,
and two runs over the same examples (pixels encoded on the fly vs pre-encoded latents) get the same losses.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lavinkit.flow import (
    ClassifierFreeGuidance,
    EulerSampler,
    FlowMatchingObjective,
    ODESampler,
    check_sampler_for_data_estimate,
)
from lavinkit.lit.incontext import EncodeMode, build_context, drop_context, encode_pairs
from lavinkit.lit.utils import (
    VALIDATION_PENDING_KEY,
    NonfiniteSteps,
    attached_trainer,
    batch_keys,
    build_init_arg,
    checkpoint_validation_pending,
    run_pending_validation,
    save_plain_hyperparameters,
    validation_pending,
)
from lavinkit.models.jdit import JDiT, JDiTConfig
from lavinkit.seeding import derive_generator

__all__ = ["JDiTModule"]


class _Frozen:
    """Holds a frozen model outside the LightningModule's module tree.

    Not an ``nn.Module`` attribute, so it is not moved by ``.to()``, not wrapped or sharded by the strategy, not in
    ``state_dict()`` and not in ``parameters()``; ``deepcopy`` (EMA's ``AveragedModel``) shares it.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict) -> _Frozen:
        return self


class JDiTModule(LightningModule):
    """Train a J-DiT with conditional flow matching on in-context batches.

    Args:
        dit: J-DiT preset name (``"tiny"``, ``"0.1b"``, ``"1b"``, ``"official-3b"``) or a ``JDiTConfig``.
        dit_overrides: ``JDiTConfig`` field overrides applied to the preset (e.g. ``attention``,
            ``activation_checkpointing``, ``drop_path``).
        vae: ST-VAE weights (``.safetensors`` from ``save_pretrained`` or a lavinkit ``.ckpt``); frozen. Needed for
            pixel batches; with latent batches only for pixel-space validation (``None`` skips it).
        vae_use_ema: load the VAE's EMA weights when the file has them.
        init_weights: optional J-DiT weights to start from (initialisation, not resume; resume with
            ``--ckpt_path``).
        objective: flow-matching objective (time sampler, loss weights); default: the official logit-normal time
            and MSE + 0.1 L1.
        context_dropout: probability of replacing a row's examples by the null context ``[zeros, query]`` (what
            classifier-free guidance contrasts with at inference).
        optimizer: optimizer factory for the trainable J-DiT parameters.
        lr_scheduler: optional scheduler factory; stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``.
        encode_mode: ``"mean"`` (posterior mean, as ``lavinkit encode --mode mean``) or ``"sample"``.
        encode_batch_size: images/clips per VAE encoder call.
        seed: seed of the per-step generators (dropout, time, noise).
        compile: ``torch.compile`` every J-DiT block (``true`` / ``"blocks"``) or the whole J-DiT (``"model"``).
        activation_checkpointing: recompute blocks in backward: ``true`` every block, an int n every n-th block;
            ``None`` leaves it to ``dit_overrides.activation_checkpointing`` (see :mod:`lavinkit.lit.parallel`).
        max_nonfinite_steps: a step whose loss is NaN/Inf on any rank is skipped on every rank together (no
            update, no EMA update); this many consecutive skipped steps are tolerated, the next one stops the run
            with ``FloatingPointError`` naming the step and the batch's keys (counts: ``train/nonfinite_steps``,
            saved in checkpoints).
        sampler: validation/test ODE sampler (default: Euler on the official 20-point grid).
        guidance: classifier-free guidance of validation/test sampling (default: scale 1.5, mode "auto").
        val_samples_per_task: sampled examples per task in each validation epoch (0 disables sampling; the
            validation flow loss is always computed).
        test_samples_per_task: sampled examples per task in ``lavinkit test`` (``None``: every test example).
        sample_seed: seed of the sampling noise (the same examples get the same noise every epoch).
        log_images: sampled examples per task written to TensorBoard as ``query | prediction | target`` rows
            (tag ``<stage>/<task>``; clips as a video, or frame strips ``<stage>/<task>/<i>`` without moviepy).
    """

    def __init__(
        self,
        dit: str | JDiTConfig = "tiny",
        dit_overrides: dict[str, Any] | None = None,
        vae: str | None = None,
        vae_use_ema: bool = True,
        init_weights: str | None = None,
        objective: FlowMatchingObjective | None = None,
        context_dropout: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["step", "epoch"] = "step",
        encode_mode: EncodeMode = "mean",
        encode_batch_size: int = 16,
        seed: int = 0,
        compile: bool | Literal["blocks", "model"] = False,
        activation_checkpointing: bool | int | None = None,
        sampler: ODESampler | None = None,
        guidance: ClassifierFreeGuidance | None = None,
        max_nonfinite_steps: int = 10,
        val_samples_per_task: int = 2,
        test_samples_per_task: int | None = None,
        sample_seed: int = 0,
        log_images: int = 2,
    ) -> None:
        super().__init__()
        # every argument as a plain value: checkpoints load with weights_only=True and
        # JDiTModule.load_from_checkpoint(path) rebuilds the module (and its components) from them alone
        save_plain_hyperparameters(self)
        objective = build_init_arg(objective, FlowMatchingObjective)
        sampler, guidance = build_init_arg(sampler, ODESampler), build_init_arg(guidance, ClassifierFreeGuidance)
        optimizer = build_init_arg(optimizer, torch.optim.Optimizer, factory=True)
        lr_scheduler = build_init_arg(lr_scheduler, torch.optim.lr_scheduler.LRScheduler, factory=True)
        if isinstance(dit, dict):  # a described JDiTConfig (hyperparameters of a checkpoint)
            dit = JDiTConfig.from_dict(dit)
        if isinstance(dit, JDiTConfig):
            self.dit_config = dataclasses.replace(dit, **(dit_overrides or {})) if dit_overrides else dit
        else:
            self.dit_config = JDiTConfig.from_name(dit, **(dit_overrides or {}))
        if not 0.0 <= context_dropout < 1.0:
            raise ValueError(f"JDiTModule: context_dropout must be in [0, 1), got {context_dropout}")
        if encode_mode not in ("mean", "sample"):
            raise ValueError(f"JDiTModule: encode_mode must be 'mean' or 'sample', got {encode_mode!r}")
        if lr_scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"JDiTModule: lr_scheduler_interval must be 'step' or 'epoch', got {lr_scheduler_interval!r}")

        self.dit: JDiT | None = None
        self.vae_path = str(vae) if vae is not None else None
        self._vae = _Frozen(self._load_vae(vae, vae_use_ema)) if vae is not None else None
        self.init_weights = init_weights
        self.objective = objective if objective is not None else FlowMatchingObjective()
        self.context_dropout = float(context_dropout)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.encode_mode = encode_mode
        self.encode_batch_size = int(encode_batch_size)
        self.seed = int(seed)
        from lavinkit.lit.parallel import checkpoint_every, compile_mode

        self.compile_blocks = compile_mode(compile)
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing is not None:
            checkpoint_every(activation_checkpointing)  # validates the option
            if self.dit_config.activation_checkpointing:  # one switch decides: the module's
                self.dit_config = dataclasses.replace(self.dit_config, activation_checkpointing=False)
        self.sampler = sampler if sampler is not None else EulerSampler(num_steps=20, grid="official")
        if self.dit_config.query_residual:
            check_sampler_for_data_estimate(self.sampler)
        self.guidance = guidance if guidance is not None else ClassifierFreeGuidance(scale=1.5)
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.nonfinite = NonfiniteSteps(type(self).__name__, self.max_nonfinite_steps)
        self._validate_on_resume = False
        self.val_samples_per_task = int(val_samples_per_task)
        self.test_samples_per_task = test_samples_per_task
        self.sample_seed = int(sample_seed)
        self.log_images = int(log_images)
        self._scores: dict[str, dict[str, list[float]]] = {}
        self._seen: dict[str, int] = {}
        self._images: dict[str, list[Tensor]] = {}  # per task: [3 (query, prediction, target), 3, T, H, W]

    # ------------------------------------------------------------------ models
    @staticmethod
    def _load_vae(path: str, use_ema: bool) -> torch.nn.Module:
        from lavinkit.models.stvae import STVAE

        if not Path(path).is_file():
            raise FileNotFoundError(f"JDiTModule: vae={path!r}: no such ST-VAE weights file")
        vae = STVAE.from_pretrained(path, use_ema=use_ema)
        vae.eval().requires_grad_(False)
        return vae

    @property
    def vae(self) -> torch.nn.Module | None:
        """The frozen ST-VAE (on this module's device), or ``None``."""
        if self._vae is None:
            return None
        vae = self._vae.module
        if next(vae.parameters()).device != self.device:
            vae.to(self.device)
        return vae

    def configure_model(self) -> None:
        """Build the J-DiT once (called by the strategy, possibly inside a meta/sharded init context)."""
        if self.dit is not None:
            return
        dit = JDiT(self.dit_config)
        if self.init_weights is not None:
            from lavinkit.models.io import load_pretrained

            kind, _, state = load_pretrained(self.init_weights)
            if kind != "jdit":
                raise ValueError(f"JDiTModule: init_weights={self.init_weights!r} holds a {kind!r} model, not a J-DiT")
            # under a sharded strategy the model is built on the meta device: assign the loaded tensors
            meta = any(p.is_meta for p in dit.parameters())
            dit.load_state_dict(state, strict=True, assign=meta)
            dit.freeze_dead_parameters(self.dit_config.freeze_dead_params)
        from lavinkit.lit.parallel import parallelize_jdit

        mesh = self.device_mesh  # set by ModelParallelStrategy: FSDP2 over its data-parallel dimension
        parallelize_jdit(dit, compile=self.compile_blocks, activation_checkpointing=self.activation_checkpointing,
                         mesh=mesh["data_parallel"] if mesh is not None else None)
        self.dit = dit

    def _require_dit(self) -> JDiT:
        if self.dit is None:
            self.configure_model()
        return self.dit

    def setup(self, stage: str) -> None:
        if attached_trainer(self) is not None:
            from lavinkit.lit.parallel import check_jdit_strategy

            check_jdit_strategy(
                self.trainer, type(self).__name__, compile=self.compile_blocks,
                activation_checkpointing=self.activation_checkpointing,
                config_checkpointing=self.dit_config.activation_checkpointing, init_weights=self.init_weights,
            )
        vae = self._vae.module if self._vae is not None else None
        if vae is not None:
            channels = vae.config.latent_channels
            if channels != self.dit_config.in_channels:
                raise ValueError(
                    f"JDiTModule: the ST-VAE {self.vae_path} makes {channels}-channel latents but the J-DiT expects "
                    f"in_channels={self.dit_config.in_channels} (set dit_overrides.in_channels or use another vae)"
                )

    def forward(self, x: Tensor, t: Tensor, context: Tensor, context_lengths: Tensor | None = None) -> Tensor:
        """Velocity ``[B, C, Tx, h, w]`` of noisy latents ``x`` at times ``t [B]`` given ``context [B, C, Tc, h, w]``."""
        return self._require_dit()(x, t, context, context_lengths=context_lengths)

    # ------------------------------------------------------------------ data -> latents
    def latents(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``(context [B, C, (2k+1) t, h, w], x1 [B, C, t, h, w])`` from a pixel or latent batch."""
        inputs, targets = batch["input"], batch["target"]
        if inputs.shape != targets.shape:
            raise ValueError(
                "context/target mismatch: batch 'input' has shape "
                f"{tuple(inputs.shape)} but 'target' has {tuple(targets.shape)}; every pair of an in-context batch "
                "must share channels, frames, height and width"
            )
        if inputs.ndim != 6 or inputs.shape[1] < 2:
            raise ValueError(
                f"JDiTModule needs in-context batches [B, N, ...] with N = num_context + 1 >= 2 (at least one example "
                f"pair before the query); got 'input' of shape {tuple(inputs.shape)}"
            )
        if batch.get("latents", False):
            lat_in, lat_tgt = inputs.float(), targets.float()
        else:
            vae = self.vae
            if vae is None:
                raise ValueError(
                    "JDiTModule: the batch holds pixels but no ST-VAE was given (set model.vae, or train on latent "
                    "shards written by `lavinkit encode`)"
                )
            lat_in, lat_tgt = encode_pairs(
                vae, inputs, targets, mode=self.encode_mode, max_batch=self.encode_batch_size,
                generator=self._generator("encode") if self.encode_mode == "sample" else None,
            )  # fmt: skip
        if lat_in.shape[2] != self.dit_config.in_channels:
            raise ValueError(
                f"JDiTModule: batch latents have {lat_in.shape[2]} channels but the J-DiT expects "
                f"in_channels={self.dit_config.in_channels}"
            )
        return build_context(lat_in, lat_tgt)

    def _generator(self, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
        batch_idx = getattr(self, "_batch_idx", 0)
        # evaluation draws do not depend on the step: validation losses are comparable between epochs
        step = self.global_step if self.training else -1
        return derive_generator(self.seed, stream, step, batch_idx, self.global_rank, device=device)

    # ------------------------------------------------------------------ training
    def flow_loss(self, batch: dict[str, Any], *, dropout: float) -> dict[str, Tensor]:
        """Flow-matching loss terms ``{"loss", "mse", "l1", ...}`` of one in-context batch."""
        dit = self._require_dit()
        context, x1 = self.latents(batch)
        b, t_q = x1.shape[0], x1.shape[2]
        lengths = None
        if dropout > 0:
            drop = torch.rand(b, generator=self._generator("dropout")) < dropout
            if bool(drop.any()):
                context, lengths = drop_context(context, t_q, drop)
        return self.objective(
            lambda x, t: dit(x, t, context, context_lengths=lengths), x1,
            generator=self._generator("time"), noise_generator=self._generator("noise", x1.device),
        )  # fmt: skip

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self._batch_idx = batch_idx
        terms = self.flow_loss(batch, dropout=self.context_dropout)
        b = terms["t"].shape[0]
        finite = bool(torch.isfinite(terms["loss"]))
        if attached_trainer(self) is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)  # skip on all ranks or none
        if not finite:
            self.log("train/nonfinite_steps", float(self.nonfinite.total + 1), batch_size=b)
            self.nonfinite.skipped(self.global_step, batch_keys(batch))
            return None
        self.nonfinite.finite()
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=b)
        self.log("train/mse", terms["mse"], batch_size=b)
        self.log("train/l1", terms["l1"], batch_size=b)
        self.log("train/num_context", float(batch.get("num_context", 0)), batch_size=b)
        if attached_trainer(self) is not None and self.trainer.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            # learned scalars of the attention plug-ins, e.g. Infini-attention's per-head memory gates
            for name, value in self.dit.attention_metrics().items():
                self.log(f"attention/{name}", value, batch_size=b)
        return terms["loss"]

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer(params)
        if self.lr_scheduler is None:
            return optimizer
        scheduler = self.lr_scheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval}}

    # ------------------------------------------------------------------ sampling, validation, test
    @torch.no_grad()
    def sample(self, context: Tensor, x1_shape: torch.Size, *, generator: torch.Generator | None = None) -> Tensor:
        """Answer latents ``[B, C, t, h, w]`` for ``context [B, C, Tc, h, w]`` (ODE from noise, with guidance)."""
        dit = self._require_dit()
        noise = torch.randn(x1_shape, generator=generator, device="cpu").to(context.device)
        fn = self.guidance.velocity_fn(
            lambda x, t, c, lens: dit(x.to(c.dtype), t, c, context_lengths=lens), context, query_frames=x1_shape[2]
        )
        return self.sampler(fn, noise).sample

    def _decode(self, z: Tensor) -> Tensor | None:
        vae = self.vae
        if vae is None:
            return None
        return vae.decode(vae.denormalize_latents(z).to(next(vae.parameters()).dtype)).float().clamp(-1, 1)

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, stage: str, limit: int | None) -> None:
        self._batch_idx = batch_idx
        b = batch["input"].shape[0]
        if stage == "val":
            # fixed per-batch generators: the validation loss is comparable between epochs
            terms = self.flow_loss(batch, dropout=0.0)
            self.log("val/loss", terms["loss"], batch_size=b, sync_dist=True)
            self.log("val/mse", terms["mse"], batch_size=b, sync_dist=True)
            self.log("val/l1", terms["l1"], batch_size=b, sync_dist=True)
        tasks = list(batch["task"])
        rows = []
        for i, task in enumerate(tasks):
            if limit is None or self._seen.get(task, 0) < limit:
                self._seen[task] = self._seen.get(task, 0) + 1
                rows.append(i)
        if not rows:
            return
        sub = {k: (v[rows] if isinstance(v, Tensor) else v) for k, v in batch.items()}
        context, x1 = self.latents(sub)
        keys = batch.get("keys")
        # the same examples get the same noise every epoch: seeded by the query keys
        noise_gen = derive_generator(self.sample_seed, *(keys[i][-1] if keys else f"{batch_idx}-{i}" for i in rows))
        pred = self.sample(context, x1.shape, generator=noise_gen)  # [b, C, t, h, w]
        pred_px = self._decode(pred)
        if pred_px is None:
            for j, i in enumerate(rows):
                err = (pred[j] - x1[j]).square().mean().item()
                self._scores.setdefault(tasks[i], defaultdict(list))["latent_mse"].append(err)
            return
        if sub.get("latents", False):
            target_px = self._decode(x1)  # the VAE's reconstruction stands in for the unseen pixels
            query_px = self._decode(context[:, :, -x1.shape[2] :])
        else:
            target_px = sub["target"][:, -1].float()
            query_px = sub["input"][:, -1].float()
        self._score(pred_px, target_px, [tasks[i] for i in rows])
        if stage == "test":
            self._score_identity(query_px, target_px, [tasks[i] for i in rows])
        for j, i in enumerate(rows):
            shown = self._images.setdefault(tasks[i], [])
            if len(shown) < self.log_images:
                shown.append(torch.stack([query_px[j], pred_px[j], target_px[j]]).cpu())

    def _score(self, pred: Tensor, target: Tensor, tasks: list[str]) -> None:
        """Per-sample PSNR / SSIM in pixel space (``[b, 3, T, H, W]`` in [-1, 1]; frames scored as images)."""
        from lavinkit.evaluation.metrics import psnr, ssim

        p = ((pred + 1) / 2).clamp(0, 1)
        g = ((target.to(pred.device) + 1) / 2).clamp(0, 1)
        for j, task in enumerate(tasks):
            scores = self._scores.setdefault(task, defaultdict(list))
            scores["psnr"].append(psnr(p[j], g[j]))
            scores["ssim"].append(ssim(p[j], g[j]))

    def _score_identity(self, query: Tensor, target: Tensor, tasks: list[str]) -> None:
        """Per-sample PSNR of the identity baseline (the query returned unchanged) vs the target (``[b, 3, T, H, W]``
        in [-1, 1]): the number a prediction has to beat for the task to be learned at all."""
        from lavinkit.evaluation.metrics import psnr

        q = ((query + 1) / 2).clamp(0, 1)
        g = ((target.to(query.device) + 1) / 2).clamp(0, 1)
        for j, task in enumerate(tasks):
            self._scores.setdefault(task, defaultdict(list))["identity_psnr"].append(psnr(q[j], g[j]))

    def _log_table_text(self, stage: str, table: dict[str, dict[str, float]]) -> None:
        """The per-task table as Markdown text in every TensorBoard logger (``<stage>/tasks``)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        from lavinkit.evaluation import format_task_table

        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not table:
            return
        rows = {}
        for task, ms in table.items():
            rows[task] = dict(ms)
            if "psnr" in ms and "identity_psnr" in ms:
                rows[task]["beats_identity_db"] = ms["psnr"] - ms["identity_psnr"]
        text = format_task_table(rows, markdown=True)
        for logger in loggers:
            logger.experiment.add_text(f"{stage}/tasks", text, global_step=self.global_step)

    def _reset_eval(self) -> None:
        self._scores, self._seen, self._images = {}, {}, {}

    def _reduce_scores(self) -> dict[str, dict[str, float]]:
        """Per-task means over all ranks: ``{task: {metric: mean, "count": n}}``."""
        local = {t: {m: (sum(v), len(v)) for m, v in ms.items()} for t, ms in self._scores.items()}
        gathered = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, local)
        totals: dict[str, dict[str, list[float]]] = {}
        for part in gathered:
            for task, metrics in part.items():
                for m, (s, n) in metrics.items():
                    acc = totals.setdefault(task, {}).setdefault(m, [0.0, 0])
                    acc[0] += s
                    acc[1] += n
        return {
            task: {**{m: s / max(n, 1) for m, (s, n) in ms.items()}, "count": max(n for _, n in ms.values())}
            for task, ms in sorted(totals.items())
        }

    def _log_scores(self, stage: str) -> dict[str, dict[str, float]]:
        table = self._reduce_scores()
        for task, metrics in table.items():
            for m, value in metrics.items():
                if m != "count":
                    self.log(f"{stage}/{task}/{m}", float(value), rank_zero_only=True)
        for m in ("psnr", "ssim", "latent_mse"):
            values = [ms[m] for ms in table.values() if m in ms]
            if values:
                self.log(f"{stage}/{m}", float(sum(values) / len(values)), rank_zero_only=True)
        return table

    def _log_images(self, stage: str) -> None:
        """``query | prediction | target`` rows per task under ``<stage>/<task>``, through the media path the
        ST-VAE's reconstructions take too (:func:`lavinkit.lit.callbacks.log_media`)."""
        from lavinkit.lit.callbacks import log_media

        for task, rows in sorted(self._images.items()):
            tiles = torch.stack(rows)  # [n, 3 (query, prediction, target), 3, T, H, W]
            log_media(self.trainer, f"{stage}/{task}", [tiles[:, k] for k in range(3)], max_samples=len(rows))

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val", self.val_samples_per_task)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")
        if self.global_rank == 0:
            self._log_images("val")
        self._reset_eval()

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test", self.test_samples_per_task)

    def on_test_epoch_end(self) -> None:
        table = self._log_scores("test")
        if self.global_rank == 0:
            self._log_images("test")
            rank_zero_info(format_table(table))
            self._log_table_text("test", table)
        self._reset_eval()

    # ------------------------------------------------------------------ checkpoints
    def ema_target(self) -> torch.nn.Module:
        """The module averaged by ``lavinkit.lit.callbacks.EMA``: the J-DiT (never the frozen VAE)."""
        return self._require_dit()

    @property
    def nonfinite_steps(self) -> int:
        """Training steps skipped for a non-finite loss in this run (continued after a resume)."""
        return self.nonfinite.total

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add ``checkpoint["lavinkit"]``: kind, J-DiT config, prefix, the VAE path, the non-finite step counts and
        (from the EMA callback, whose hook runs first) the EMA weights."""
        block = checkpoint.setdefault("lavinkit", {})
        block.update(kind="jdit", config=self.dit_config.to_dict(), prefix="dit.", vae=self.vae_path,
                     nonfinite=self.nonfinite.state_dict())
        block[VALIDATION_PENDING_KEY] = validation_pending(attached_trainer(self))
        block.setdefault("ema_state_dict", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        block = checkpoint.get("lavinkit") or {}
        self.nonfinite.load_state_dict(block.get("nonfinite") or {})
        self._validate_on_resume = checkpoint_validation_pending(checkpoint, attached_trainer(self))

    def on_train_start(self) -> None:
        # a checkpoint written on a batch whose validation had not run yet: run it now (Lightning would skip it)
        if self._validate_on_resume:
            self._validate_on_resume = False
            run_pending_validation(self.trainer)


def format_table(table: dict[str, dict[str, float]]) -> str:
    """Per-task metrics as a fixed-width text table."""
    metrics = sorted({m for ms in table.values() for m in ms if m != "count"})
    head = f"{'task':<24} {'n':>5} " + " ".join(f"{m:>10}" for m in metrics)
    lines = [head, "-" * len(head)]
    for task, ms in table.items():
        cells = " ".join(f"{ms[m]:>10.4f}" if m in ms and math.isfinite(ms[m]) else f"{'-':>10}" for m in metrics)
        lines.append(f"{task:<24} {int(ms.get('count', 0)):>5} {cells}")
    return "\n".join(lines)
