"""Callbacks shared by the lavinkit LightningModules: EMA, validation media logging, data/step timing.

Media
-----
Both modules' validation media reach TensorBoard through :func:`log_media` (grids by :func:`media_panels`): the
ST-VAE's reconstructions per batch via the :class:`MediaLogger` callback, the J-DiT's ``query | prediction |
target`` rows per task at the end of an evaluation epoch.

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
  EMA as raw weights;
* it deep-copies the module, which sharded modules (FSDP2 DTensors, FSDP flat parameters, ZeRO-3 partitions)
  refuse; torch's ``AveragedModel`` does the same.

Here the average is a dict of tensors shaped like each parameter's LOCAL storage (its shard under FSDP2, FSDP and
ZeRO-3, the full tensor otherwise), updated in place with ``torch._foreach_lerp_`` (the update rule of torch's
``get_ema_multi_avg_fn``): sharded training keeps a sharded EMA, with no extra communication per step. On save
the shards are gathered (a collective on every rank) into full CPU tensors: the raw weights always stay in
``state_dict``; the EMA weights live in this callback's state (``checkpoint["callbacks"]``, restored on resume,
resharded to the current layout) and, prefix-free, in ``checkpoint["lavinkit"]["ema_state_dict"]`` (where
``lavinkit.models.io.load_pretrained`` and ``lavinkit export`` find them; same tensors, stored once by
``torch.save``). It works with manual optimisation: it updates after every batch in which
``trainer.global_step`` advanced and, under automatic optimisation, ``training_step`` returned a loss, so skipped
(non-finite) steps do not update it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from lavinkit.models.io import LAVINKIT_KEY

# name segments that wrappers insert into parameter names (FSDP1, checkpoint_wrapper, torch.compile)
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


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
            return target, _clean_name(name + "." if name else "")
    raise ValueError(f"EMA callback: ema_target() of {type(pl_module).__name__} is not a submodule of it")


def _clean_name(name: str) -> str:
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def live_tensors(module: nn.Module) -> dict[str, Tensor]:
    """``{state-dict name: tensor}`` of ``module``'s parameters and persistent buffers, as the module holds them
    (DTensors under FSDP2, local flat-parameter views under FSDP, partitioned parameters under ZeRO-3); wrapper
    segments are removed from the names so they match ``module.state_dict()`` of the unwrapped model."""
    out: dict[str, Tensor] = {}
    for mod_name, mod in module.named_modules():
        prefix = mod_name + "." if mod_name else ""
        for name, p in mod.named_parameters(recurse=False):
            out.setdefault(_clean_name(prefix + name), p)
        for name, b in mod.named_buffers(recurse=False):
            if b is not None and name not in mod._non_persistent_buffers_set:
                out.setdefault(_clean_name(prefix + name), b)
    return out


def _layout(tensors: dict[str, Tensor], strategy: Any = None) -> str:
    """``"dtensor"`` (FSDP2), ``"zero3"`` (DeepSpeed partitioned), ``"fsdp"`` (FSDP flat-parameter views: Lightning's
    ``FSDPStrategy``) or ``"plain"``."""
    from torch.distributed.tensor import DTensor

    if type(strategy).__name__ == "FSDPStrategy":
        return "fsdp"
    values = list(tensors.values())
    if any(isinstance(t, DTensor) for t in values):
        return "dtensor"
    if any(hasattr(t, "ds_tensor") for t in values):
        return "zero3"
    if any(getattr(t, "_is_flat_param", False) or hasattr(t, "_fsdp_flattened") for t in values):
        return "fsdp"
    return "plain"


def _local(t: Tensor) -> Tensor:
    """The storage this rank holds for ``t``: the local shard of a DTensor, the partition of a ZeRO-3 parameter,
    ``t`` itself otherwise (FSDP's views already are local)."""
    if hasattr(t, "to_local"):
        return t.to_local()
    if hasattr(t, "ds_tensor"):
        return t.ds_tensor
    return t


class EMA(Callback):
    """Exponential moving average of ``pl_module.ema_target()`` (see the module docstring), sharding-aware.

    Args:
        decay: EMA decay per update (``ema = decay * ema + (1 - decay) * w``).
        update_every_n_steps: update after every n-th optimisation step.
        start_step: first optimisation step (0-based) that updates; the first update copies the weights.
        validate_with_ema: run validation with the EMA weights swapped in (swapped back afterwards; a checkpoint
            written meanwhile still stores the raw weights in ``state_dict``).
        device: keep the average on this device (e.g. ``"cpu"`` to save accelerator memory); default: the
            module's device. Under sharded strategies each rank keeps only its shard.
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
        self.shadow: dict[str, Tensor] | None = None  # local storage of every averaged tensor
        self.n_averaged = 0
        self._prefix = ""
        self._last_step = 0
        self._pending: dict[str, Tensor] | None = None  # full tensors restored from a checkpoint
        self._swapped = False
        self._stash: dict[str, Tensor] | None = None  # raw local values while the EMA values are in the model
        self._target: nn.Module | None = None
        self._fit_trainer: pl.Trainer | None = None

    @property
    def average(self) -> dict[str, Tensor] | None:
        """The local EMA tensors once the callback is set up (``None`` before)."""
        return self.shadow

    # ------------------------------------------------------------------ state
    def _build(self, pl_module: pl.LightningModule) -> None:
        target, self._prefix = _ema_target(pl_module)
        self._target = target
        if self.shadow is None:
            live = live_tensors(target)
            self.shadow = {k: self._new_shadow(_local(v)) for k, v in live.items()}
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._load_full(pending)

    def _new_shadow(self, t: Tensor) -> Tensor:
        """An EMA tensor for local tensor ``t``: float32 when ``t`` is a lower-precision float (a bf16 average with
        decay 0.999 would barely move), on ``self.device`` or ``t``'s device."""
        dtype = torch.float32 if t.is_floating_point() and t.element_size() < 4 else t.dtype
        return t.detach().to(device=self.device or t.device, dtype=dtype, copy=True)

    def _strategy(self) -> Any:
        return self._fit_trainer.strategy if self._fit_trainer is not None else None

    def _live(self) -> dict[str, Tensor]:
        assert self._target is not None
        return live_tensors(self._target)

    def _pairs(self) -> Iterator[tuple[str, Tensor, Tensor]]:
        """``(name, local model tensor, local EMA tensor)`` for every averaged tensor."""
        assert self.shadow is not None
        live = self._live()
        if live.keys() != self.shadow.keys():
            raise RuntimeError(
                f"EMA callback: the tensors of {type(self._target).__name__} changed since the average was built "
                f"(missing {sorted(self.shadow.keys() - live.keys())[:3]}, new {sorted(live.keys() - self.shadow.keys())[:3]})"
            )
        for name, t in live.items():
            yield name, _local(t), self.shadow[name]

    @torch.no_grad()
    def update(self) -> None:
        """One EMA update from the current weights (the first update copies them)."""
        floats_ema, floats_model = [], []
        for _, model_t, ema_t in self._pairs():
            src = model_t.detach().to(ema_t.device)
            if self.n_averaged == 0 or not ema_t.is_floating_point():
                ema_t.copy_(src)
            else:
                floats_ema.append(ema_t)
                floats_model.append(src.to(ema_t.dtype))
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_model, 1.0 - self.decay)
        self.n_averaged += 1

    def ema_state_dict(self) -> dict[str, Tensor] | None:
        """Prefix-free EMA weights of the target as full CPU tensors (``None`` before the first update).

        Under a sharded strategy this gathers the shards: call it on every rank together."""
        if self.shadow is None:
            if self._pending is not None:
                return dict(self._pending)
            return None
        if self.n_averaged == 0:
            return None
        return self._gather_full()

    def model_state_dict(self) -> dict[str, Tensor]:
        """Prefix-free RAW weights of the target as full CPU tensors, gathered like :meth:`ema_state_dict` (call it
        on every rank together under a sharded strategy)."""
        assert self.shadow is not None, "EMA callback: not set up yet"
        return self._gather_full(ema=False)

    def _gather_full(self, ema: bool = True) -> dict[str, Tensor]:
        """Full EMA (or raw) tensors on the CPU, whatever the sharding of the target."""
        live = self._live()
        layout = _layout(live, self._strategy())
        if ema:
            sources = self.shadow
        else:
            sources = self._stash if self._swapped else {k: _local(v) for k, v in live.items()}
        if layout == "plain":
            return {k: v.detach().clone().cpu() for k, v in sources.items()}
        if layout == "dtensor":
            from torch.distributed.tensor import DTensor

            out = {}
            for name, model_t in live.items():
                local = sources[name]
                if isinstance(model_t, DTensor):
                    full = DTensor.from_local(local.to(model_t.device), model_t.device_mesh, model_t.placements,
                                              run_check=False, shape=model_t.shape, stride=model_t.stride())
                    out[name] = full.full_tensor().cpu()
                else:
                    out[name] = local.detach().clone().cpu()
            return out
        # FSDP flat parameters / ZeRO-3 partitions: put the wanted values in the model, gather it, restore
        with self._values_in_model(ema):
            return self._gathered_model_state(layout)

    @contextlib.contextmanager
    def _values_in_model(self, ema: bool):
        swap = ema != self._swapped
        if swap:
            self._swap()
        try:
            yield
        finally:
            if swap:
                self._swap()

    def _gathered_model_state(self, layout: str) -> dict[str, Tensor]:
        """Full CPU state of the target under FSDP or ZeRO-3 (collective)."""
        names = list(self.shadow)
        if layout == "zero3":
            import deepspeed

            live = self._live()
            params = [t for t in live.values() if hasattr(t, "ds_tensor")]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: live[k].detach().clone().cpu() for k in names}
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = self._fit_trainer.strategy.model if self._fit_trainer is not None else self._target
        with FSDP.summon_full_params(root, writeback=False, offload_to_cpu=True):
            live = self._live()
            return {k: live[k].detach().clone().cpu() for k in names}

    @torch.no_grad()
    def _load_full(self, full: dict[str, Tensor]) -> None:
        """Set the local EMA tensors from full tensors (resharding them to the target's current layout)."""
        assert self.shadow is not None
        missing = self.shadow.keys() - full.keys()
        if missing:
            raise ValueError(
                f"EMA callback: the checkpoint's EMA state lacks {sorted(missing)[:5]} of {type(self._target).__name__}"
            )
        live = self._live()
        layout = _layout(live, self._strategy())
        if layout in ("plain", "dtensor"):
            from torch.distributed.tensor import DTensor, distribute_tensor

            for name, ema_t in self.shadow.items():
                model_t, value = live[name], full[name]
                if isinstance(model_t, DTensor):
                    value = distribute_tensor(value.to(model_t.device, model_t.dtype), model_t.device_mesh,
                                              model_t.placements).to_local()
                ema_t.copy_(value.to(ema_t.device, ema_t.dtype))
            return
        # FSDP / ZeRO-3: write the full EMA into the model, keep the resulting local shards, restore the raw weights
        raw = {k: _local(t).detach().clone() for k, t in live.items()}
        if layout == "zero3":
            import deepspeed

            params = [t for t in live.values() if hasattr(t, "ds_tensor")]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
                for k, t in self._live().items():
                    t.data.copy_(full[k].to(t.device, t.dtype))
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            root = self._fit_trainer.strategy.model if self._fit_trainer is not None else self._target
            with FSDP.summon_full_params(root, writeback=True):
                for k, t in self._live().items():
                    t.data.copy_(full[k].to(t.device, t.dtype))
        for name, model_t, ema_t in self._pairs():
            ema_t.copy_(model_t.detach())
            model_t.data.copy_(raw[name])

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_step": self._last_step, "decay": self.decay}
        full = self.ema_state_dict() if self.shadow is not None else self._pending
        if full is not None:
            state["average"] = {**{"module." + k: v for k, v in full.items()},
                                "n_averaged": torch.tensor(max(self.n_averaged, 1))}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict["last_step"])
        if "average" in state_dict:
            average = state_dict["average"]
            self.n_averaged = int(average.get("n_averaged", 1))
            full = {k[len("module."):]: v for k, v in average.items() if k.startswith("module.")}
            if self.shadow is not None:
                self._load_full(full)
            else:
                self._pending = full

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.shadow is None:
            return
        if self._swapped and "state_dict" in checkpoint and _layout(self._live(), self._strategy()) == "plain":
            # Validation runs with EMA swapped in: the model holds EMA, the stash holds the raw weights.
            # Keep the raw weights in "state_dict" (never let EMA become the training weights on resume).
            for k, v in self._stash.items():
                checkpoint["state_dict"][self._prefix + k] = v.detach().clone()
        block = checkpoint.setdefault(LAVINKIT_KEY, {})
        callback_state = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("average")
        if callback_state is not None:  # share tensors with the callback state: stored once by torch.save
            block["ema_state_dict"] = {k[len("module."):]: v for k, v in callback_state.items() if k.startswith("module.")}
        else:
            block["ema_state_dict"] = self.ema_state_dict()

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fit_trainer = trainer

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_trainer = trainer
        self._build(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step <= self._last_step or self.shadow is None:
            return  # no optimisation step in this batch (skipped, or accumulating)
        self._last_step = step
        if pl_module.automatic_optimization and not outputs:
            # automatic optimisation counts a step for a batch whose training_step returned None (a skipped
            # non-finite step; its outputs are empty): the weights did not change, so the average does not move
            return
        step_idx = step - 1
        if step_idx >= self.start_step and (step_idx - self.start_step) % self.update_every_n_steps == 0:
            self.update()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_trainer = trainer
        if self.shadow is None and self._pending is not None:
            self._build(pl_module)  # `validate` with a checkpoint: EMA restored without a fit
        if self.validate_with_ema and self.shadow is not None and not self._swapped:
            if self.n_averaged == 0:
                return  # nothing averaged yet (sanity check before the first step): EMA == raw
            self._swap()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._swapped:
            self._swap()

    @torch.no_grad()
    def _swap(self, pl_module: pl.LightningModule | None = None) -> None:
        """Put the EMA values into the target (keeping its raw values aside), or restore the raw values."""
        if not self._swapped:
            self._stash = {}
            for name, model_t, ema_t in self._pairs():
                self._stash[name] = model_t.detach().clone()
                model_t.copy_(ema_t.to(model_t.device, model_t.dtype))
        else:
            for name, model_t, _ in self._pairs():
                model_t.copy_(self._stash[name])
            self._stash = None
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

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx >= self.num_batches or not trainer.is_global_zero or trainer.sanity_checking:
            return
        if not isinstance(outputs, dict) or "media" not in outputs:
            return
        for name, tensors in outputs["media"].items():
            log_media(trainer, f"val/{name}/{batch_idx}", tensors, max_samples=self.max_samples, fps=self.fps)


def log_media(trainer: pl.Trainer, tag: str, tensors: Sequence[Tensor], *, max_samples: int = 4,
              fps: int = 4) -> None:
    """Write ``tensors`` (each ``[B, 3, T, H, W]`` in [-1, 1], shown side by side per sample) to the trainer's first
    TensorBoard logger at the current global step; nothing without one.

    Images (``T == 1``) become one grid under ``tag``; clips a video under ``tag`` when ``moviepy`` is installed
    (TensorBoard's ``add_video`` needs it), otherwise one frame strip per sample under ``tag/<i>``
    (see :func:`media_panels`).
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if logger is None:
        return
    writer = logger.experiment
    video = importlib.util.find_spec("moviepy") is not None
    for key, value in media_panels(tensors, max_samples, video=video).items():
        if value.dim() == 5:
            writer.add_video(f"{tag}{key}", value, trainer.global_step, fps=fps)
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


__all__ = ["EMA", "MediaLogger", "StepTimer", "log_media", "media_panels"]
