"""STVAEModule: ST-VAE training (reconstruction + KL [+ perceptual] [+ GAN]) as a LightningModule.

The module only orchestrates injected parts:

* ``vae``: a preset name (``STVAEConfig.from_name``) plus ``vae_overrides``, or an ``STVAEConfig``;
* loss components from ``lavinkit.losses``: ``reconstruction``, ``kl``, optional ``perceptual`` and
  ``adversarial`` (which owns the discriminator, the warm-up ``disc_start`` and the adaptive weight);
* ``optimizer`` / ``disc_optimizer`` (``OptimizerCallable``) and optional schedulers (``LRSchedulerCallable``,
  stepped once per optimisation step of their optimizer).

Training uses manual optimisation with two optimizers and ONE backward per step: the generator's adversarial
term sees the discriminator with detached parameters and the discriminator loss sees the reconstruction
detached, so ``backward(generator loss + discriminator loss)`` gives each model exactly its own gradient.
``trainer.global_step`` counts generator updates (one per batch that was not skipped): the generator steps through
its ``LightningOptimizer`` (counted), the discriminator through the strategy's public ``optimizer_step`` (precision
plugin and hooks applied, not counted), so ``max_steps``, ``disc_start`` and EMA schedules mean the same before and
after the discriminator switches on.

Stage 1 trains on image pairs, stage 2 on images + clips (a mixture DataModule; every batch is one
modality). Both the input and the target frames of every pair are training examples. Stage 2 starts from
stage-1 weights with ``init_from`` (weights only: fresh optimizers, fresh discriminator), which is not the
same as resuming a run with ``--ckpt_path``.

Reliability: a non-finite loss (or gradient norm) on ANY rank skips the step on all ranks together (the
flag is all-reduced) and is counted in ``train/skipped_nonfinite``; more than ``max_nonfinite_steps`` such steps in
a row stop the run with ``FloatingPointError``. Under DDP every trainable parameter is
tied into the loss with a zero weight, so parameters a step does not use (the discriminator before
``disc_start``, the 3-D discriminator on image batches) never raise unused-parameter errors. DeepSpeed
(one optimizer) and Lightning's FSDP (no manual optimisation) are rejected at setup.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lavinkit.lit.utils import (
    VALIDATION_PENDING_KEY,
    NonfiniteSteps,
    attached_trainer,
    batch_keys,
    build_init_arg,
    check_manual_optimization_strategy,
    checkpoint_validation_pending,
    run_pending_validation,
    save_plain_hyperparameters,
    step_generator,
    validation_pending,
)
from lavinkit.losses import AdversarialLoss, KLLoss, PerceptualLoss, ReconstructionLoss, total
from lavinkit.models.io import LAVINKIT_KEY
from lavinkit.models.stvae import STVAE, STVAEConfig

KIND, PREFIX = "stvae", "vae."


def _no_closure() -> None:
    return None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


class STVAEModule(pl.LightningModule):
    """Train an :class:`~lavinkit.models.stvae.STVAE` on pixel pair batches.

    Args:
        vae: preset name (``"tiny"``, ``"small"``, ``"official"``) or an ``STVAEConfig``.
        reconstruction: pixel loss (terms ``rec_l1`` / ``rec_l2``).
        kl: KL loss (term ``kl``).
        perceptual: optional perceptual loss (term ``perceptual``); its backbone is frozen and not saved.
        adversarial: optional GAN loss holding the discriminator (terms ``g_adv``, ``d_loss``).
        optimizer: optimizer of the VAE parameters.
        disc_optimizer: optimizer of the discriminator parameters (used when ``adversarial`` is set).
        scheduler / disc_scheduler: optional LR schedulers of the two optimizers (stepped per optimizer step).
        vae_overrides: config fields overriding the preset (e.g. ``{"causal_norm": true}``).
        init_from: initialise the VAE weights (only) from a lavinkit ``.ckpt`` or a ``.safetensors`` weights
            file at setup; a missing file is an error naming it. Use ``--ckpt_path`` to resume instead.
        init_use_ema: take the EMA weights from ``init_from`` when it has them.
        sample_posterior: decode a posterior sample in training (the mean when ``False``); validation always
            decodes the mean.
        grad_clip_norm: clip the VAE's and the discriminator's gradient norms (``None``: no clipping; the norms
            are still checked for finiteness).
        gradient_checkpointing: recompute the VAE's resnet blocks in backward (``None``: the config's value).
        seed: seeds the posterior sampling per (step, batch, rank), so resumed runs draw what uninterrupted
            runs draw.
        val_media_batches: validation batches whose inputs and reconstructions are returned for
            ``lavinkit.lit.callbacks.MediaLogger``.
        measure_latent_stats: after every validation epoch of ``fit``, set the config's ``latent_shift`` /
            ``latent_scale`` to the mean and ``1 / std`` of the validation posterior means (logged as
            ``val/latent_mean``, ``val/latent_std`` in any case), so the normalised latents that ``lavinkit encode``
            writes for the J-DiT have zero mean and unit variance. Off: the configured values are kept.
        pair_sides: which images of each input/target pair the VAE trains and validates on: ``"both"``, or
            ``"target"`` only (clean images, when inputs are degraded copies: noise, JPEG blocks or dark
            frames cannot be reconstructed and take capacity from natural images; such inputs are still
            encoded fine for the J-DiT).
        max_nonfinite_steps: a step whose loss or gradient norm is NaN/Inf on any rank is skipped on every rank
            together (no update of either model, no EMA update); this many consecutive skipped steps are tolerated,
            the next one stops the run with ``FloatingPointError`` naming the step and the batch's keys (counts:
            ``train/skipped_nonfinite``, saved in checkpoints).
    """

    def __init__(
        self,
        vae: str | STVAEConfig,
        reconstruction: ReconstructionLoss,
        kl: KLLoss,
        perceptual: PerceptualLoss | None = None,
        adversarial: AdversarialLoss | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        disc_optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        disc_scheduler: LRSchedulerCallable | None = None,
        vae_overrides: dict[str, Any] | None = None,
        init_from: str | None = None,
        init_use_ema: bool = True,
        sample_posterior: bool = True,
        grad_clip_norm: float | None = 1.0,
        gradient_checkpointing: bool | None = None,
        seed: int = 0,
        val_media_batches: int = 1,
        measure_latent_stats: bool = False,
        pair_sides: Literal["both", "target"] = "both",
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        # every argument as a plain value: checkpoints load with weights_only=True and
        # STVAEModule.load_from_checkpoint(path) rebuilds the module (and its components) from them alone
        save_plain_hyperparameters(self)
        reconstruction, kl = build_init_arg(reconstruction, nn.Module), build_init_arg(kl, nn.Module)
        perceptual, adversarial = build_init_arg(perceptual, nn.Module), build_init_arg(adversarial, nn.Module)
        optimizer = build_init_arg(optimizer, torch.optim.Optimizer, factory=True)
        disc_optimizer = build_init_arg(disc_optimizer, torch.optim.Optimizer, factory=True)
        scheduler = build_init_arg(scheduler, torch.optim.lr_scheduler.LRScheduler, factory=True)
        disc_scheduler = build_init_arg(disc_scheduler, torch.optim.lr_scheduler.LRScheduler, factory=True)
        self.automatic_optimization = False
        if isinstance(vae, dict):  # a described STVAEConfig (hyperparameters of a checkpoint)
            vae = STVAEConfig.from_dict(vae)
        if isinstance(vae, str):
            config = STVAEConfig.from_name(vae, **(vae_overrides or {}))
        elif isinstance(vae, STVAEConfig):
            config = dataclasses.replace(vae, **(vae_overrides or {}))
        else:
            raise TypeError(f"STVAEModule: vae must be a preset name or an STVAEConfig, got {type(vae).__name__}")
        if gradient_checkpointing is not None:
            config = dataclasses.replace(config, gradient_checkpointing=gradient_checkpointing)
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"STVAEModule: grad_clip_norm={grad_clip_norm} must be > 0 or None")
        self.vae = STVAE(config)
        self.reconstruction = reconstruction
        self.kl = kl
        self.perceptual = perceptual
        self.adversarial = adversarial
        self.optimizer = optimizer
        self.disc_optimizer = disc_optimizer
        self.scheduler = scheduler
        self.disc_scheduler = disc_scheduler
        self.init_from = init_from
        self.init_use_ema = init_use_ema
        self.sample_posterior = sample_posterior
        self.grad_clip_norm = grad_clip_norm
        self.seed = seed
        self.val_media_batches = val_media_batches
        self.measure_latent_stats = bool(measure_latent_stats)
        if pair_sides not in ("both", "target"):
            raise ValueError(f"STVAEModule: pair_sides must be 'both' or 'target', got {pair_sides!r}")
        self.pair_sides = pair_sides
        self._initialised_from: str | None = None
        # torchmetrics states are not persistent: they follow the module's device and stay out of checkpoints
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        # persistent counter (resumes with the run)
        self.register_buffer("skipped_nonfinite", torch.zeros((), dtype=torch.long))
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.nonfinite = NonfiniteSteps(type(self).__name__, self.max_nonfinite_steps, what="loss or gradient norm")
        self._validate_on_resume = False

    @property
    def _val_metrics(self) -> dict[str, Any]:
        return {"psnr": self.val_psnr, "ssim": self.val_ssim}

    # ------------------------------------------------------------------ setup
    def ema_target(self) -> nn.Module:
        """The module ``lavinkit.lit.callbacks.EMA`` averages."""
        return self.vae

    def setup(self, stage: str) -> None:
        check_manual_optimization_strategy(self.trainer, type(self).__name__)
        if stage == "fit" and self.init_from and self._initialised_from != self.init_from:
            self.load_vae_weights(self.init_from, use_ema=self.init_use_ema)

    def load_vae_weights(self, path: str | Path, use_ema: bool = True) -> None:
        """Load VAE weights (strict) from a lavinkit ``.ckpt`` or ``.safetensors`` file (``init_from``)."""
        from lavinkit.models.io import load_pretrained

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"STVAEModule: init_from={str(path)!r} does not exist (weights-only initialisation, e.g. the stage-1 "
                "checkpoint for stage 2; to resume an interrupted run pass --ckpt_path instead)"
            )
        kind, config, state = load_pretrained(path, use_ema=use_ema)
        if kind != KIND:
            raise ValueError(f"STVAEModule: init_from={str(path)!r} holds a {kind!r} model, not an ST-VAE")
        ours = self.vae.config.to_dict()
        differ = {k: (v, ours[k]) for k, v in config.items()
                  if k in ours and k not in ("name", "gradient_checkpointing") and _plain(v) != _plain(ours[k])}
        try:
            missing, unexpected = self.vae.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatch
            raise ValueError(
                f"STVAEModule: init_from={str(path)!r} holds an ST-VAE of another architecture; config fields that "
                f"differ (file, configured): {differ}"
            ) from err
        if missing or unexpected:
            raise ValueError(
                f"STVAEModule: init_from={str(path)!r} does not match the configured VAE: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}; config fields that differ (file, configured): {differ}"
            )
        self._initialised_from = str(path)

    def configure_optimizers(self):
        opts = [self.optimizer(self.vae.parameters())]
        if self.adversarial is not None:
            opts.append(self.disc_optimizer(self.adversarial.discriminator.parameters()))
        scheds = []
        for opt, make in zip(opts, (self.scheduler, self.disc_scheduler)):
            if make is not None:
                scheds.append({"scheduler": make(opt), "interval": "step"})
        return opts, scheds

    # ------------------------------------------------------------------ batches
    def clips(self, batch: dict[str, Any]) -> Tensor:
        """Training examples of a pair batch: ``input`` and ``target`` ``[B, N, 3, T, H, W]`` ->
        ``[B * 2N, 3, T, H, W]`` (both sides of every pair) or ``[B * N, 3, T, H, W]`` (``pair_sides="target"``)."""
        if batch.get("latents"):
            raise ValueError(
                "STVAEModule trains on pixels but got a latent batch; use an image/video/mixture pair DataModule"
            )
        if self.pair_sides == "target":
            return batch["target"].flatten(0, 1)
        x = torch.cat([batch["input"], batch["target"]], dim=1)  # [B, 2N, 3, T, H, W]
        return x.flatten(0, 1)

    def _optimizers(self):
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        g_opt = opts[0]
        d_opt = opts[1] if len(opts) > 1 else None
        scheds = self.lr_schedulers()
        scheds = [] if scheds is None else (scheds if isinstance(scheds, list) else [scheds])
        g_sched = next((s for s in scheds if s.optimizer is g_opt.optimizer), None)
        d_sched = next((s for s in scheds if d_opt is not None and s.optimizer is d_opt.optimizer), None)
        return g_opt, d_opt, g_sched, d_sched

    # ------------------------------------------------------------------ losses
    def compute_losses(
        self, x: Tensor, step: int, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], Tensor]:
        """All loss terms of one batch of examples ``x`` ``[M, 3, T, H, W]``.

        Returns:
            ``(generator_terms, discriminator_terms, stats, x_hat)`` — weighted scalar terms (their sums are
            the two losses), extra scalars for logging and the reconstruction.
        """
        x_hat, posterior = self.vae(x, sample_posterior=self.sample_posterior, generator=generator)
        g_terms = dict(self.reconstruction(x_hat, x))
        if self.perceptual is not None:
            g_terms.update(self.perceptual(x_hat, x))
        rec_loss = total(g_terms)
        g_terms.update(self.kl(posterior))
        stats: dict[str, Tensor] = {}
        d_terms: dict[str, Tensor] = {}
        if self.adversarial is not None and self.adversarial.active(step):
            adv_terms, adv_stats = self.adversarial.generator_terms(x_hat, rec_loss, self.vae.last_decoder_weight, step)
            g_terms.update(adv_terms)
            stats.update(adv_stats)
            d_terms, d_stats = self.adversarial.discriminator_terms(x, x_hat, step)
            stats.update(d_stats)
        return g_terms, d_terms, stats, x_hat

    def _all_ranks_any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank (the same answer everywhere)."""
        t = torch.tensor(float(flag), device=self.device)
        if self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return bool(t.item() > 0)

    def _tie_all_parameters(self, loss: Tensor) -> Tensor:
        # DDP (find_unused_parameters=False) needs a gradient for every trainable parameter in every backward;
        # a zero-weighted term reaches the ones this step does not use (and adds nothing elsewhere).
        tie = sum(p.view(-1)[0] for p in self.parameters() if p.requires_grad)
        return loss + 0.0 * tie

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = self.clips(batch)
        g_opt, d_opt, g_sched, d_sched = self._optimizers()
        step = self.global_step
        g_terms, d_terms, stats, _ = self.compute_losses(x, step, step_generator(self.seed, step, batch_idx,
                                                                               self.global_rank, self.device))
        g_loss = total(g_terms)
        loss = g_loss + total(d_terms) if d_terms else g_loss
        if self.trainer.world_size > 1:
            loss = self._tie_all_parameters(loss)

        skip = self._all_ranks_any(not bool(torch.isfinite(loss.detach()).item()))
        if not skip:
            g_opt.zero_grad(set_to_none=True)
            if d_opt is not None:
                d_opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            norms = self._clip(d_opt is not None and bool(d_terms))
            # gradients are identical on all ranks after DDP's all-reduce: the same decision everywhere
            skip = not all(bool(torch.isfinite(n).item()) for n in norms.values())
            stats.update({f"grad_norm_{k}": v for k, v in norms.items()})
        if skip:
            g_opt.zero_grad(set_to_none=True)
            if d_opt is not None:
                d_opt.zero_grad(set_to_none=True)
            self.skipped_nonfinite += 1
            self.nonfinite.skipped(step, batch_keys(batch))
        else:
            self.nonfinite.finite()
            g_opt.step()
            if g_sched is not None:
                g_sched.step()
            if d_opt is not None and d_terms:
                self._step_discriminator(d_opt)
                if d_sched is not None:
                    d_sched.step()
        self._log_train(g_terms, d_terms, stats, g_loss, x, skip)

    def _clip(self, with_disc: bool) -> dict[str, Tensor]:
        norms = {"vae": self._clip_params(self.vae.parameters())}
        if with_disc:
            norms["disc"] = self._clip_params(self.adversarial.discriminator.parameters())
        return norms

    def _clip_params(self, params) -> Tensor:
        params = [p for p in params if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        max_norm = self.grad_clip_norm if self.grad_clip_norm is not None else float("inf")
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def _step_discriminator(self, opt) -> None:
        # LightningOptimizer.step() counts a global step in manual optimisation; the discriminator's update goes
        # through the same strategy/precision path without being counted (global_step = generator updates).
        self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure, model=self)

    def _log_train(self, g_terms, d_terms, stats, g_loss, x, skipped: bool) -> None:
        logs = {f"train/{k}": v.detach().float() for k, v in {**g_terms, **d_terms, **stats}.items()}
        logs["train/g_loss"] = g_loss.detach().float()
        if d_terms:
            logs["train/d_total"] = total(d_terms).detach().float()
        if not skipped:  # a skipped step's (non-finite) values would poison epoch means
            self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("train/loss", g_loss.detach().float() if not skipped else torch.zeros((), device=self.device),
                 prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log("train/skipped_nonfinite", self.skipped_nonfinite.float(), on_step=True, on_epoch=False,
                 batch_size=x.shape[0])
        self.log("train/frames", float(x.shape[2]), on_step=True, on_epoch=False, batch_size=x.shape[0])

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        for m in self._val_metrics.values():
            m.reset()
        # float64 sum, sum of squares and count of the posterior means seen in this validation epoch
        self._latent_moments = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        x = self.clips(batch)
        posterior = self.vae.encode(x)
        z = posterior.mode()
        self._latent_moments += torch.stack([z.double().sum(), z.double().square().sum(),
                                             torch.tensor(z.numel(), dtype=torch.float64, device=z.device)])
        x_hat = self.vae.decode(z).clamp(-1, 1)
        terms = dict(self.reconstruction(x_hat, x))
        terms.update(self.kl(posterior))
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        # metrics on [0, 1] frames: [M, 3, T, H, W] -> [M*T, 3, H, W]
        frames = ((x.float() + 1) / 2).transpose(1, 2).flatten(0, 1)
        frames_hat = ((x_hat.float() + 1) / 2).transpose(1, 2).flatten(0, 1)
        for metric in self._val_metrics.values():
            metric.update(frames_hat, frames)
        if batch_idx < self.val_media_batches:
            return {"media": {"reconstruction": [x, x_hat]}}
        return None

    def on_validation_epoch_end(self) -> None:
        for name, metric in self._val_metrics.items():
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "psnr", sync_dist=False)
            metric.reset()
        moments = self.trainer.strategy.reduce(self._latent_moments, reduce_op="sum")
        if float(moments[2]) > 1:
            total, squares, count = (float(v) for v in moments)
            mean = total / count
            std = max((squares / count - mean * mean) * count / (count - 1), 0.0) ** 0.5
            self.log_dict({"val/latent_mean": mean, "val/latent_std": std}, sync_dist=False)
            if self.measure_latent_stats and self.trainer.state.fn == "fit" and std > 0:
                self.set_latent_normalization(mean, 1.0 / std)

    def set_latent_normalization(self, shift: float, scale: float) -> None:
        """Store ``normalize_latents(z) = (z - shift) * scale`` in the VAE config (saved with every checkpoint).

        With ``measure_latent_stats`` this is called after each validation epoch with the mean and ``1 / std`` of
        the validation posterior means, so the latents the J-DiT trains on (``lavinkit encode``) have zero mean
        and unit variance, the scale of the flow's Gaussian noise.
        """
        self.vae.config.latent_shift = float(shift)
        self.vae.config.latent_scale = float(scale)
        overrides = dict(self.hparams.get("vae_overrides") or {})
        overrides.update(latent_shift=float(shift), latent_scale=float(scale))
        self.hparams["vae_overrides"] = overrides

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add ``checkpoint["lavinkit"]`` (kind, VAE config, prefix, the non-finite step counts; the EMA callback
        fills ``ema_state_dict``)."""
        block = checkpoint.setdefault(LAVINKIT_KEY, {})
        block.update({"kind": KIND, "config": self.vae.config.to_dict(), "prefix": PREFIX,
                      "nonfinite": self.nonfinite.state_dict(),
                      VALIDATION_PENDING_KEY: validation_pending(attached_trainer(self))})
        block.setdefault("ema_state_dict", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        block = checkpoint.get(LAVINKIT_KEY)
        if block is not None and block.get("kind") != KIND:
            raise ValueError(
                f"STVAEModule: cannot resume from a {block.get('kind')!r} checkpoint (expected an ST-VAE run)"
            )
        if block is not None:
            self.nonfinite.load_state_dict(block.get("nonfinite") or {})
        self._validate_on_resume = checkpoint_validation_pending(checkpoint, attached_trainer(self))
        if block is not None and self.measure_latent_stats:
            saved = block.get("config", {})
            if "latent_shift" in saved and "latent_scale" in saved:
                self.set_latent_normalization(saved["latent_shift"], saved["latent_scale"])

    def on_train_start(self) -> None:
        # a checkpoint written on a batch whose validation had not run yet: run it now (Lightning would skip it)
        if self._validate_on_resume:
            self._validate_on_resume = False
            run_pending_validation(self.trainer)


__all__ = ["STVAEModule"]
