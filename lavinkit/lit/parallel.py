"""Speed switches and sharding of the J-DiT, and the strategy checks run before training.

:func:`parallelize_jdit` applies, in the order torchtitan's ``parallelize`` recipes use: activation checkpointing per
block (every block, or every n-th one), ``torch.compile`` per block (regional) or of the whole model, then FSDP2
``fully_shard`` of every block and of the root over a data-parallel mesh. All three act in place: parameter names
and checkpoint keys stay those of the plain model (no ``_orig_mod`` / ``_checkpoint_wrapped_module`` segments).

:func:`check_jdit_strategy` refuses, at ``setup``, the strategy and option combinations that cannot work, with a
message that says what to use instead.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CompileMode = Literal["blocks", "model"]


def compile_mode(value: bool | str | None) -> CompileMode | None:
    """Normalise a ``compile`` option: ``True``/``"blocks"`` -> per block, ``"model"`` -> whole model,
    ``False``/``None``/``"none"`` -> off."""
    if value is None or value is False or value == "none":
        return None
    if value is True or value == "blocks":
        return "blocks"
    if value == "model":
        return "model"
    raise ValueError(f"compile={value!r}: use false, true / 'blocks' (every block compiled) or 'model' (whole model)")


def checkpoint_every(value: bool | int | None) -> int:
    """Normalise an ``activation_checkpointing`` option to "checkpoint every n-th block" (0 = off).

    ``True`` -> 1 (every block, "full"), an int n >= 1 -> every n-th block ("selective": blocks 0, n, 2n, ...),
    ``False``/``0``/``None`` -> off.
    """
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if isinstance(value, int) and value >= 0:
        return int(value)
    raise ValueError(
        f"activation_checkpointing={value!r}: use true (every block), an int n (every n-th block) or false"
    )


def checkpoint_block(block: nn.Module) -> None:
    """Make ``block`` recompute its forward in backward (non-reentrant ``torch.utils.checkpoint``), in place: only
    while gradients are enabled; names, hooks and ``state_dict`` are unchanged."""
    if getattr(block, "_lavinkit_checkpointed", False):
        return
    forward = block.forward

    @functools.wraps(forward)
    def checkpointed(*args: Any, **kwargs: Any):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    block.forward = checkpointed
    block._lavinkit_checkpointed = True


def compile_in_place(model: nn.Module, blocks: Sequence[nn.Module], compile: bool | str | None) -> nn.Module:
    """``torch.compile`` each of ``blocks`` (``"blocks"``) or the whole ``model`` (``"model"``) in place
    (``nn.Module.compile``: names and ``state_dict`` unchanged; compilation happens on the first call). Returns
    ``model``. ``compile``: see :func:`compile_mode`."""
    mode = compile_mode(compile)
    if mode == "blocks":
        for block in blocks:
            block.compile()
    elif mode == "model":
        model.compile()
    return model


def parallelize_jdit(
    dit: nn.Module,
    *,
    compile: bool | str | None = None,
    activation_checkpointing: bool | int | None = None,
    mesh: Any = None,
) -> nn.Module:
    """Apply the speed switches and FSDP2 sharding to a J-DiT, in place (returns it).

    Args:
        dit: the model; its repeated blocks are ``dit.block_class`` instances.
        compile: see :func:`compile_mode`.
        activation_checkpointing: see :func:`checkpoint_every`. Independent of the model config's own
            ``activation_checkpointing`` flag (which checkpoints every block inside ``JDiT.forward``).
        mesh: a 1-D device mesh (the ``data_parallel`` dimension of ``ModelParallelStrategy``'s mesh): every block
            and then the root are sharded with ``fully_shard`` over it. ``None``: no sharding.
    """
    blocks = [m for m in dit.modules() if isinstance(m, dit.block_class)]
    every = checkpoint_every(activation_checkpointing)
    if every:
        for i, block in enumerate(blocks):
            if i % every == 0:
                checkpoint_block(block)
    compile_in_place(dit, blocks, compile)
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(dit, mesh=mesh)
    return dit


def _strategy_name(strategy: Any) -> str:
    return type(strategy).__name__


def _deepspeed_stage(strategy: Any) -> int | None:
    config = getattr(strategy, "config", None) or {}
    zero = config.get("zero_optimization", {}) if isinstance(config, dict) else {}
    stage = zero.get("stage")
    return int(stage) if stage is not None else None


def check_jdit_strategy(
    trainer: Any,
    module_name: str = "JDiTModule",
    *,
    compile: bool | str | None = None,
    activation_checkpointing: bool | int | None = None,
    config_checkpointing: bool = False,
    init_weights: str | None = None,
) -> None:
    """Refuse strategy/option combinations the J-DiT cannot train with; each message names what to use instead.

    Raises:
        ValueError: ``ModelParallelStrategy`` with tensor parallelism (not implemented for the J-DiT) or with
            ``compile: model`` (compile per block composes with ``fully_shard``); Lightning's ``FSDPStrategy`` with an
            ``activation_checkpointing_policy`` while the module checkpoints blocks too (recomputed twice);
            DeepSpeed ZeRO-3 with ``init_weights`` (the model is partitioned while it is built, so weights loaded in
            ``configure_model`` land in empty partitions).
    """
    strategy = trainer.strategy
    name = _strategy_name(strategy)
    mode = compile_mode(compile)
    module_ckpt = checkpoint_every(activation_checkpointing) > 0 or config_checkpointing
    if name == "ModelParallelStrategy":
        tp = getattr(strategy, "_tensor_parallel_size", 1)
        tp = int(strategy.num_processes if tp == "auto" else tp)
        if tp != 1:
            raise ValueError(
                f"{module_name}: ModelParallelStrategy(tensor_parallel_size={tp}) is not supported: the J-DiT is sharded "
                "with FSDP2 over the data-parallel dimension only; set tensor_parallel_size: 1 and "
                "data_parallel_size to the number of processes"
            )
        if mode == "model":
            raise ValueError(
                f"{module_name}: compile='model' is not supported under ModelParallelStrategy (FSDP2): compile each "
                "block instead (compile: blocks), which composes with fully_shard"
            )
    if name == "FSDPStrategy":
        policy = getattr(strategy, "_activation_checkpointing_kwargs", None) or {}
        if policy and module_ckpt:
            raise ValueError(
                f"{module_name}: blocks would be checkpointed twice: the FSDP strategy has an "
                "activation_checkpointing_policy and the module checkpoints blocks too "
                "(model.activation_checkpointing or dit_overrides.activation_checkpointing); keep one of them"
            )
    if name == "DeepSpeedStrategy" and _deepspeed_stage(strategy) == 3 and init_weights:
        raise ValueError(
            f"{module_name}: init_weights={init_weights!r} is not supported with DeepSpeed ZeRO-3 (the model is "
            "partitioned while it is built, so the loaded weights would land in empty partitions); start from the "
            "weights with DeepSpeed stage 2, DDP or FSDP2 (ModelParallelStrategy), or resume with --ckpt_path"
        )


__all__ = ["check_jdit_strategy", "checkpoint_block", "checkpoint_every", "compile_in_place", "compile_mode",
           "parallelize_jdit"]
