"""Small shared pieces of the LightningModules: strategy checks, per-step random generators and the plain
(``weights_only``-loadable) hyperparameters that let ``Module.load_from_checkpoint(path)`` rebuild a module."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from lavinkit.models.io import LAVINKIT_KEY
from lavinkit.seeding import derive_generator


def check_manual_optimization_strategy(trainer: pl.Trainer, module_name: str) -> None:
    """Reject strategies and precisions a two-optimizer, manually optimised module cannot train with.

    Raises:
        ValueError: DeepSpeed (one optimizer per engine), Lightning's FSDP (no manual optimisation), FSDP2 through
            ``ModelParallelStrategy`` (the module does not shard itself; DDP serves a model this size), or fp16
            mixed precision (a GradScaler is not stepped by the manual loop; use ``bf16-mixed``). The message
            names the option.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        raise ValueError(
            f"{module_name}: trainer.strategy=deepspeed is not supported: DeepSpeed drives one optimizer per engine "
            "and the VAE-GAN needs two (VAE + discriminator) with manual optimisation; use strategy: ddp"
        )
    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            f"{module_name}: trainer.strategy=fsdp is not supported: Lightning's FSDP does not support manual "
            "optimisation; use strategy: ddp"
        )
    if type(strategy).__name__ == "ModelParallelStrategy":
        raise ValueError(
            f"{module_name}: trainer.strategy=ModelParallelStrategy (FSDP2) is not supported: the VAE-GAN is small "
            "and manually optimised with two optimizers; use strategy: ddp"
        )
    precision = str(getattr(trainer.precision_plugin, "precision", ""))
    if precision in ("16-mixed", "16"):
        raise ValueError(
            f"{module_name}: trainer.precision={precision} is not supported (no GradScaler in the manual loop, and "
            "fp16 gradient norms of the adaptive GAN weight overflow); use precision: bf16-mixed"
        )


def step_generator(seed: int, step: int, batch_idx: int, rank: int, device: torch.device) -> torch.Generator:
    """A generator seeded from ``(seed, step, batch_idx, rank)``: a resumed run draws what the uninterrupted
    run draws at the same step, without checkpointing RNG states."""
    return derive_generator(seed, step, batch_idx, rank, device=device)


class NonfiniteSteps:
    """Counts training steps skipped for a non-finite loss (or gradient) and stops the run after too many in a row.

    ``total`` counts every skipped step, ``consecutive`` the current run of them (reset by a finite step). The
    decision to skip is the same on every rank (the caller all-reduces it), so every rank raises at the same step.
    Both counts go into checkpoints (:meth:`state_dict`) and continue after a resume.

    Args:
        owner: name in the error message (the module's class name).
        max_consecutive: ``max_nonfinite_steps``: that many consecutive skipped steps are tolerated; the next one
            raises ``FloatingPointError``.
        what: what was not finite, for the message (``"loss"``, ``"loss or gradient norm"``).
    """

    def __init__(self, owner: str, max_consecutive: int, what: str = "loss") -> None:
        if max_consecutive < 0:
            raise ValueError(f"{owner}: max_nonfinite_steps={max_consecutive} must be >= 0")
        self.owner, self.max_consecutive, self.what = owner, int(max_consecutive), what
        self.total = 0
        self.consecutive = 0

    def finite(self) -> None:
        """A step that trained: the run of skipped steps ends."""
        self.consecutive = 0

    def skipped(self, global_step: int, keys: Any = None) -> None:
        """A step skipped for a non-finite value; raises once more than ``max_consecutive`` are skipped in a row.

        Raises:
            FloatingPointError: naming the count, the option, the global step and the batch's sample keys.
        """
        self.total += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise FloatingPointError(
                f"{self.owner}: non-finite {self.what} in {self.consecutive} consecutive steps (max_nonfinite_steps="
                f"{self.max_consecutive}); last at global step {global_step}, batch keys {keys}; the run stops (lower "
                "the learning rate, check the inputs of these keys, or raise max_nonfinite_steps)"
            )

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total = int(state.get("total", self.total))
        self.consecutive = int(state.get("consecutive", 0))


def batch_keys(batch: Any) -> list[str]:
    """The query sample key of every row of a pair batch (``batch["keys"]``: ``B x N`` keys), for error messages."""
    keys = batch.get("keys") if isinstance(batch, Mapping) else None
    return [row[-1] if isinstance(row, (list, tuple)) and row else row for row in (keys or [])]


VALIDATION_PENDING_KEY = "validation_pending"


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The Trainer ``module`` is attached to, or ``None`` (a module used on its own, e.g. in a notebook).

    ``LightningModule.trainer`` raises when no Trainer is attached; this asks it without reading private state.
    """
    try:
        return module.trainer
    except RuntimeError:
        return None


def validation_pending(trainer: pl.Trainer | None) -> bool:
    """True while ``trainer`` is between training a batch after which validation is due and running that validation:
    in ``on_train_batch_end``, where ``ModelCheckpoint(every_n_train_steps=...)`` saves (on an epoch's last batch
    when the step count is a multiple of the epoch length). A checkpoint written then records it, and
    :func:`run_pending_validation` runs that validation when ``fit`` resumes from it."""
    if trainer is None or not trainer.training or trainer.sanity_checking:
        return False
    loop = trainer.fit_loop.epoch_loop
    progress = loop.batch_progress
    current = progress.current
    if not (current.processed == current.ready and current.completed == current.processed - 1):
        return False  # not inside a batch's end hooks
    # the rule of Lightning's training epoch loop, from the trainer's public settings: an epoch that validates
    # (check_val_every_n_epoch), then every val_check_batch batches of the epoch (of the run when the epoch
    # count is off), and always on the epoch's last batch
    every_epochs = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (every_epochs is not None and (trainer.current_epoch + 1) % every_epochs):
        return False
    if progress.is_last_batch:
        return True
    every_batches = trainer.val_check_batch
    if every_batches is None or every_batches == float("inf"):
        return False
    batch = progress.total.ready if every_epochs is None else current.ready
    return batch % int(every_batches) == 0


def checkpoint_validation_pending(checkpoint: Mapping[str, Any], trainer: pl.Trainer | None) -> bool:
    """Whether ``checkpoint`` was written before a due validation ran (see :func:`validation_pending`).

    Checkpoints record it in ``checkpoint["lavinkit"]["validation_pending"]``; for checkpoints without that entry it
    is read from Lightning's loop state: written in the end hooks of an epoch's last batch, before any validation of
    that epoch, in an epoch that validates under ``trainer``'s ``check_val_every_n_epoch``.
    """
    recorded = (checkpoint.get(LAVINKIT_KEY) or {}).get(VALIDATION_PENDING_KEY)
    if recorded is not None:
        return bool(recorded)
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    batches, val = loop.get("epoch_loop.batch_progress"), loop.get("epoch_loop.val_loop.batch_progress")
    every = getattr(trainer, "check_val_every_n_epoch", None)
    if not batches or not val or every is None or not getattr(trainer, "enable_validation", False):
        return False
    current = batches["current"]
    in_end_hooks = current["processed"] == current["ready"] and current["completed"] == current["processed"] - 1
    return bool(in_end_hooks and batches.get("is_last_batch") and val["total"]["completed"] == 0
                and (int(checkpoint.get("epoch", 0)) + 1) % every == 0)


def run_pending_validation(trainer: pl.Trainer) -> bool:
    """Run the validation a resumed ``fit`` would skip: Lightning restores a checkpoint written in
    ``on_train_batch_end`` (:func:`validation_pending`) as if that batch's validation had run, so resuming from an
    epoch-end step checkpoint loses that epoch's validation (metrics, best-model checkpoints, early stopping).
    Call from ``on_train_start`` of the resumed run; it validates exactly as the training loop does. Returns
    whether validation ran (only when the loop restarted at that point of a batch)."""
    loop = trainer.fit_loop.epoch_loop
    if not loop.restarted_on_train_batch_end or not trainer.enable_validation:
        return False
    trainer.validating = True
    loop.val_loop.restarting = False  # a fresh validation run, not the continuation of the restored one
    loop.val_loop.run()
    trainer.training = True
    return True


def is_plain(value: Any) -> bool:
    """True for values that ``torch.load(weights_only=True)`` reads back (hyperparameters in checkpoints)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


class _Undescribable(Exception):
    pass


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(value: Any) -> Any:
    if is_plain(value):
        return list(value) if isinstance(value, tuple) else value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if hasattr(value, "to_dict") and callable(value.to_dict):  # model configs
        return value.to_dict()
    if isinstance(value, type):
        return {"class_path": _class_path(value)}
    if isinstance(value, functools.partial):
        # partial(cls, **kw), or jsonargparse's partial(call_without_instantiate_context, instantiator, cls, **kw)
        cls = value.func if isinstance(value.func, type) and not value.args else (value.args or (None,))[-1]
        if not isinstance(cls, type):
            raise _Undescribable(repr(value))
        return {"class_path": _class_path(cls), "init_args": _describe(dict(value.keywords))}
    if callable(value) and not hasattr(value, "__dict__"):
        raise _Undescribable(repr(value))
    try:
        params = inspect.signature(type(value).__init__).parameters
    except (TypeError, ValueError) as err:
        raise _Undescribable(repr(value)) from err
    init_args = {}
    for name, param in list(params.items())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if hasattr(value, name):
            init_args[name] = _describe(getattr(value, name))
        elif param.default is inspect.Parameter.empty:
            raise _Undescribable(f"{type(value).__name__}.{name}")
    return {"class_path": _class_path(type(value)), "init_args": init_args}


def describe_init_args(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Constructor arguments -> plain values ``build_init_arg`` turns back into them, and the names it cannot describe.

    Plain values stay; model configs become their ``to_dict()``; classes and ``functools.partial`` of classes
    (optimizer factories) become ``{"class_path"[, "init_args"]}``; other objects (loss modules, discriminators)
    become ``{"class_path", "init_args"}`` with the arguments read back from same-named attributes (arguments
    that are not stored default). Lambdas and objects whose required arguments are not stored cannot be described.
    """
    out, lost = {}, []
    for name, value in values.items():
        try:
            out[name] = _describe(value)
        except _Undescribable:
            lost.append(name)
    return out, lost


def save_plain_hyperparameters(module: Any) -> list[str]:
    """``module.save_hyperparameters`` with the caller's (``__init__``'s) arguments described by
    :func:`describe_init_args`: the checkpoint loads with ``weights_only=True`` and
    ``type(module).load_from_checkpoint(path)`` rebuilds the module from it alone (the constructor passes the
    described arguments through :func:`build_init_arg`). Returns the names that could not be described (they are
    left out with a warning; ``load_from_checkpoint`` then needs them passed)."""
    from lightning.pytorch.utilities import rank_zero_warn

    frame = inspect.currentframe().f_back
    names = [n for n, p in inspect.signature(type(module).__init__).parameters.items()
             if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    values = {n: frame.f_locals[n] for n in names if n in frame.f_locals}
    del frame
    described, lost = describe_init_args(values)
    if lost:
        rank_zero_warn(
            f"{type(module).__name__}: constructor arguments {lost} cannot be stored as plain hyperparameters "
            "(lambdas, objects that do not keep their arguments); load_from_checkpoint(path, ...) needs them passed"
        )
    # "_class_path" is where LightningCLI looks for the module class when `--ckpt_path` merges these hyperparameters
    # into the parsed config (subclass mode); load_from_checkpoint drops it (not an __init__ argument)
    module.save_hyperparameters({CLASS_PATH_KEY: _class_path(type(module)), **described})
    return lost


CLASS_PATH_KEY = "_class_path"


def _resolve_class(path: str, base: type) -> type:
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name)
    cls = getattr(module, name, None) if module is not None else None
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ValueError(
            f"class_path {path!r} is not an imported subclass of {base.__module__}.{base.__qualname__}; import the "
            "module that defines it before loading"
        )
    return cls


def build_init_arg(value: Any, base: type, *, factory: bool = False) -> Any:
    """The inverse of :func:`describe_init_args` for one argument: a ``{"class_path", "init_args"}`` dict becomes an
    instance of ``base`` (``factory=True``: a ``functools.partial`` of the class, e.g. an optimizer factory); nested
    specs are built as instances of ``object``. Anything else is returned unchanged. Only classes already imported
    are built (a checkpoint cannot import code)."""
    if not (isinstance(value, Mapping) and "class_path" in value):
        return value
    cls = _resolve_class(str(value["class_path"]), base)
    kwargs = {k: build_init_arg(v, object) for k, v in (value.get("init_args") or {}).items()}
    return functools.partial(cls, **kwargs) if factory else cls(**kwargs)


__all__ = [
    "CLASS_PATH_KEY",
    "NonfiniteSteps",
    "VALIDATION_PENDING_KEY",
    "batch_keys",
    "build_init_arg",
    "checkpoint_validation_pending",
    "save_plain_hyperparameters",
    "check_manual_optimization_strategy",
    "describe_init_args",
    "is_plain",
    "run_pending_validation",
    "step_generator",
    "validation_pending",
]
