"""Small shared pieces of the LightningModules: strategy checks and per-step random generators."""

from __future__ import annotations

import hashlib

import lightning.pytorch as pl
import torch


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
    digest = hashlib.blake2b(f"{seed}/{step}/{batch_idx}/{rank}".encode(), digest_size=8).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return gen


__all__ = ["check_manual_optimization_strategy", "step_generator"]
