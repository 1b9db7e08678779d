"""Callbacks shared by the lavinkit LightningModules: EMA, validation media logging, data/step timing.

EMA
---
:class:`EMA` keeps an exponential moving average of ONE submodule, the one the LightningModule names with
``ema_target() -> nn.Module`` (the VAE of ``STVAEModule``, the DiT of ``JDiTModule``). Lightning's
``EMAWeightAveraging`` / ``WeightAveraging`` (Lightning 2.6) cannot serve here:

* it averages the whole LightningModule: the GAN discriminator (and any frozen helper) would be averaged
  and deep-copied for nothing;
* on save it moves the raw weights to ``checkpoint["current_model_state"]`` and writes the EMA weights into
  ``checkpoint["state_dict"]``: anything that reads ``state_dict`` without that callback (``init_from``,
  ``load_pretrained(use_ema=False)``, a resume with the callback removed) silently turns EMA into the raw
  training weights;
* at the end of ``fit`` it copies the EMA weights into the model, so a checkpoint written afterwards holds
  EMA as raw weights.

Here the raw weights always stay in ``state_dict``; the EMA weights live in this callback's state
(``checkpoint["callbacks"]``, restored on resume) and, prefix-free, in ``checkpoint["lavinkit"]["ema_state_dict"]``
(where ``lavinkit.models.io.load_pretrained`` finds them; same tensors, stored once by ``torch.save``). The
averaging itself is torch's ``AveragedModel`` with ``get_ema_multi_avg_fn``. It works with manual
optimisation: it updates after every batch in which ``trainer.global_step`` advanced, so skipped
(non-finite) steps do not update it.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lavinkit.models.io import LAVINKIT_KEY


def _ema_target(pl_module: pl.LightningModule) -> tuple[nn.Module, str]:
    """The submodule to average and its state-dict prefix inside ``pl_module`` (e.g. ``"vae."``)."""
    getter = getattr(pl_module, "ema_target", None)
    if getter is None:
        raise AttributeError(
            f"EMA callback: {type(pl_module).__name__} has no ema_target() method naming the module to average"
        )
    target = getter()
    for name, module in pl_module.named_modules():
        if module is target:
            return target, (name + "." if name else "")
    raise ValueError(f"EMA callback: ema_target() of {type(pl_module).__name__} is not a submodule of it")


class EMA(Callback):
    """Exponential moving average of ``pl_module.ema_target()`` (see the module docstring).

    Args:
        decay: EMA decay per update (``ema = decay * ema + (1 - decay) * w``).
        update_every_n_steps: update after every n-th optimisation step.
        start_step: first optimisation step (0-based) that updates; the first update copies the weights.
        validate_with_ema: run validation with the EMA weights swapped in (swapped back afterwards; a checkpoint
            written meanwhile still stores the raw weights in ``state_dict``).
        device: keep the average on this device (e.g. ``"cpu"`` to save accelerator memory); default: the
            module's device.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        start_step: int = 0,
        validate_with_ema: bool = True,
        device: str | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay={decay} must be in [0, 1)")
        if update_every_n_steps < 1:
            raise ValueError(f"EMA: update_every_n_steps={update_every_n_steps} must be >= 1")
        self.decay = float(decay)
        self.update_every_n_steps = int(update_every_n_steps)
        self.start_step = int(start_step)
        self.validate_with_ema = validate_with_ema
        self.device = torch.device(device) if device is not None else None
        self.average: AveragedModel | None = None
        self._prefix = ""
        self._last_step = 0
        self._pending: dict[str, Tensor] | None = None
        self._swapped = False
        self._target: nn.Module | None = None

    # ------------------------------------------------------------------ state
    def _build(self, pl_module: pl.LightningModule) -> None:
        target, self._prefix = _ema_target(pl_module)
        self._target = target
        if any(type(p).__name__ == "DTensor" for p in target.parameters()):
            # AveragedModel deep-copies the target, which sharded (FSDP2 / DTensor) modules refuse
            raise ValueError(
                f"EMA callback: {type(pl_module).__name__}.ema_target() is sharded (FSDP2 / ModelParallelStrategy); "
                "EMA of sharded models is not supported: remove the EMA callback or train with DDP"
            )
        if self.average is None:
            self.average = AveragedModel(
                target, device=self.device, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True
            )
        if self._pending is not None:
            self.average.load_state_dict(self._pending)
            self._pending = None

    def ema_state_dict(self) -> dict[str, Tensor] | None:
        """Prefix-free EMA weights of the target (``None`` before the first update)."""
        if self.average is None or int(self.average.n_averaged) == 0:
            return None
        return {k[len("module."):]: v for k, v in self._average_state().items() if k.startswith("module.")}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_step": self._last_step, "decay": self.decay}
        if self.average is not None:
            state["average"] = self._average_state()
        elif self._pending is not None:
            state["average"] = self._pending
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict["last_step"])
        if "average" in state_dict:
            self._pending = dict(state_dict["average"])
            if self.average is not None:
                self.average.load_state_dict(self._pending)
                self._pending = None

    def _average_state(self) -> dict[str, Tensor]:
        """State dict of the averaged model holding the EMA values (while swapped for validation the EMA values
        sit in the target module and the average holds the raw weights)."""
        assert self.average is not None
        state = self.average.state_dict()
        if self._swapped:
            state = {**state, **{"module." + k: v.detach().clone() for k, v in self._target.state_dict().items()}}
        return state

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.average is None:
            return
        if self._swapped:
            # Validation runs with EMA swapped in: the model holds EMA, the average holds the raw weights.
            # Keep the raw weights in "state_dict" (never let EMA become the training weights on resume).
            for k, v in self.average.module.state_dict().items():
                checkpoint["state_dict"][self._prefix + k] = v.detach().clone()
        block = checkpoint.setdefault(LAVINKIT_KEY, {})
        callback_state = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("average")
        if callback_state is not None:  # share tensors with the callback state: stored once by torch.save
            block["ema_state_dict"] = {k[len("module."):]: v for k, v in callback_state.items() if k.startswith("module.")}
        else:
            block["ema_state_dict"] = self.ema_state_dict()

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._build(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step <= self._last_step or self.average is None:
            return  # no optimisation step in this batch (skipped, or accumulating)
        self._last_step = step
        step_idx = step - 1
        if step_idx >= self.start_step and (step_idx - self.start_step) % self.update_every_n_steps == 0:
            self.average.update_parameters(_ema_target(pl_module)[0])

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average is None and self._pending is not None:
            self._build(pl_module)  # `validate` with a checkpoint: EMA restored without a fit
        if self.validate_with_ema and self.average is not None and not self._swapped:
            if int(self.average.n_averaged) == 0:
                return  # nothing averaged yet (sanity check before the first step): EMA == raw
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._swapped:
            self._swap(pl_module)

    def _swap(self, pl_module: pl.LightningModule) -> None:
        """Exchange the values of the target's parameters and buffers with the average's."""
        assert self.average is not None
        target = _ema_target(pl_module)[0]
        with torch.no_grad():
            for a, b in zip(
                list(self.average.module.parameters()) + list(self.average.module.buffers()),
                list(target.parameters()) + list(target.buffers()),
                strict=True,
            ):
                tmp = a.detach().clone()
                a.copy_(b.detach())
                b.copy_(tmp)
        self._swapped = not self._swapped


class MediaLogger(Callback):
    """Writes validation media returned by ``validation_step`` to TensorBoard.

    A ``validation_step`` that returns ``{"media": {name: [tensor, ...]}}`` (each tensor ``[B, 3, T, H, W]`` in
    [-1, 1], e.g. ``[input, reconstruction]``) gets, for the first ``num_batches`` batches on rank 0:

    * images (``T == 1``): one grid per name, a row per sample, the tensors side by side;
    * clips: a video (``add_video``, side by side) when ``moviepy`` is installed, otherwise a frame strip
      image per sample (rows = the tensors, columns = frames) since TensorBoard's ``add_video`` needs moviepy.

    Args:
        num_batches: validation batches to log per epoch.
        max_samples: samples per batch.
        fps: frame rate of logged videos.
    """

    def __init__(self, num_batches: int = 1, max_samples: int = 4, fps: int = 4) -> None:
        self.num_batches = num_batches
        self.max_samples = max_samples
        self.fps = fps
        self.has_moviepy = importlib.util.find_spec("moviepy") is not None

    @staticmethod
    def _tensorboard(trainer: pl.Trainer):
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx >= self.num_batches or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not isinstance(outputs, dict) or "media" not in outputs:
            return
        writer = self._tensorboard(trainer)
        if writer is None:
            return
        for name, tensors in outputs["media"].items():
            tag = f"val/{name}/{batch_idx}"
            for key, value in media_panels(tensors, self.max_samples, video=self.has_moviepy).items():
                if value.dim() == 5:
                    writer.add_video(f"{tag}{key}", value, trainer.global_step, fps=self.fps)
                else:
                    writer.add_image(f"{tag}{key}", value, trainer.global_step)


def media_panels(tensors: Sequence[Tensor], max_samples: int = 4, video: bool = False) -> dict[str, Tensor]:
    """Arrange ``[B, 3, T, H, W]`` tensors in [-1, 1] side by side for logging.

    Returns:
        ``{"": uint8 [3, H', W'] grid}`` for images; for clips either ``{"": uint8 [N, T, 3, H, W']}`` (video,
        tensors concatenated along width) or ``{"/<i>": uint8 [3, len(tensors)*H, T*W]}`` frame strips.
    """
    from torchvision.utils import make_grid

    ts = [((t[:max_samples].detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu() for t in tensors]
    if ts[0].shape[2] == 1:
        # per sample, the tensors side by side: [B*len, 3, H, W] with nrow = len(tensors)
        frames = torch.stack([t[:, :, 0] for t in ts], dim=1).flatten(0, 1)
        return {"": make_grid(frames, nrow=len(ts), padding=2)}
    if video:
        # [B, 3, T, H, len*W] -> [B, T, 3, H, len*W]
        return {"": torch.cat(ts, dim=-1).permute(0, 2, 1, 3, 4).contiguous()}
    out = {}
    for i in range(ts[0].shape[0]):
        # rows = tensors, columns = frames: [len*T, 3, H, W]
        frames = torch.cat([t[i].permute(1, 0, 2, 3) for t in ts], dim=0)
        out[f"/{i}"] = make_grid(frames, nrow=ts[0].shape[2], padding=1)
    return out


class StepTimer(Callback):
    """Logs ``train/data_time`` (waiting for the batch) and ``train/step_time`` (the step itself) in seconds."""

    def __init__(self) -> None:
        self._batch_end: float | None = None
        self._batch_start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch_end = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch_start = time.perf_counter()
        if self._batch_end is not None:
            pl_module.log("train/data_time", self._batch_start - self._batch_end, on_step=True, on_epoch=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._batch_end = time.perf_counter()
        pl_module.log("train/step_time", self._batch_end - self._batch_start, on_step=True, on_epoch=False)


__all__ = ["EMA", "MediaLogger", "StepTimer", "media_panels"]
