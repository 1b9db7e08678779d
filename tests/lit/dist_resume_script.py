"""Multi-process run used by test_strategies.py (2 gloo processes on CPU) and benchmarks/gpu_checks.sh (GPU
strategies): train 4 steps with EMA and checkpoints every 2 steps, resume a second run from the step-2 checkpoint,
check that weights and EMA equal the uninterrupted run's, then (rank 0) export EMA and raw weights from the step-4
checkpoint with ``lavinkit export`` and load them back.

    python dist_resume_script.py {jdit|stvae} {ddp|fsdp2|fsdp|deepspeed2|deepspeed3} ROOT [DEVICES] [ACCELERATOR]
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from lavinkit.lit.callbacks import EMA


class SameBatch(IterableDataset):
    """The same batch every step (per rank): a resumed run sees exactly the batches of the uninterrupted one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        g = torch.Generator().manual_seed(10 + rank)
        if self.kind == "jdit":
            x = torch.randn(2, 2, 16, 1, 4, 4, generator=g)
            batch = {"input": x, "target": x.flip(-1), "task": ["a", "b"], "keys": [["k", "q"]] * 2,
                     "num_context": 1, "latents": True}
        else:
            x = torch.rand(1, 1, 3, 1, 16, 16, generator=g) * 2 - 1
            batch = {"input": x, "target": x.flip(-1), "task": ["t"], "keys": [["k"]], "num_context": 0}
        while True:
            yield batch


def make_module(kind: str):
    torch.manual_seed(0)
    if kind == "jdit":
        from lavinkit.lit import JDiTModule

        return JDiTModule("tiny", context_dropout=0.5, val_samples_per_task=0,
                          optimizer=partial(torch.optim.AdamW, lr=1e-2))
    from lavinkit.lit import STVAEModule
    from lavinkit.losses import AdversarialLoss, KLLoss, ReconstructionLoss
    from lavinkit.models.stvae.discriminator import NLayerDiscriminator, PatchDiscriminator

    disc = PatchDiscriminator(image=NLayerDiscriminator(2, base_channels=8, num_layers=1))
    return STVAEModule("tiny", ReconstructionLoss(), KLLoss(1e-6),
                       adversarial=AdversarialLoss(disc, disc_start=1, generator_weight=0.1),
                       optimizer=partial(torch.optim.AdamW, lr=1e-3), disc_optimizer=partial(torch.optim.AdamW, lr=1e-3))


def make_strategy(name: str, devices: int):
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from lavinkit.models.jdit.block import JointBlock

        return FSDPStrategy(auto_wrap_policy={JointBlock}, state_dict_type="sharded", use_orig_params=True)
    if name.startswith("deepspeed"):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(stage=int(name[-1]))
    return "ddp"


DEVICES, ACCELERATOR = 2, "cpu"


def fit(kind: str, strategy: str, root: Path, ckpt_path: str | None = None):
    callbacks = [EMA(decay=0.5)]
    if ckpt_path is None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=2, save_top_k=-1))
    module = make_module(kind)
    trainer = pl.Trainer(accelerator=ACCELERATOR, devices=DEVICES, strategy=make_strategy(strategy, DEVICES),
                         max_steps=4, logger=False,
                         enable_checkpointing=ckpt_path is None, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         default_root_dir=root, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=DataLoader(SameBatch(kind), batch_size=None), ckpt_path=ckpt_path)
    assert trainer.global_step == 4, trainer.global_step
    return trainer, module, callbacks[0]


def full_state(ema: EMA) -> dict[str, torch.Tensor]:
    """Full raw weights of the target, gathered under every sharding."""
    return ema.model_state_dict()


def main(kind: str, strategy: str, root: str) -> None:
    root = Path(root)
    _, full_module, full_ema = fit(kind, strategy, root)
    raw_a, ema_a = full_state(full_ema), full_ema.ema_state_dict()
    if strategy in ("fsdp2", "fsdp", "deepspeed3") and DEVICES > 1:
        assert full_ema.shadow["final.linear.weight"].shape != raw_a["final.linear.weight"].shape, "EMA not sharded"
    mid = root / "ckpt" / "epoch=0-step=2.ckpt"
    trainer, resumed, resumed_ema = fit(kind, strategy, root, ckpt_path=str(mid))
    raw_b, ema_b = full_state(resumed_ema), resumed_ema.ema_state_dict()
    assert raw_a.keys() == raw_b.keys() == ema_a.keys() == ema_b.keys()
    for k in raw_a:
        torch.testing.assert_close(raw_b[k], raw_a[k], rtol=1e-5, atol=1e-6, msg=f"raw {k}")
        torch.testing.assert_close(ema_b[k], ema_a[k], rtol=1e-5, atol=1e-6, msg=f"ema {k}")
    assert any(not torch.equal(ema_a[k], raw_a[k]) for k in raw_a), "EMA equals the raw weights"
    if trainer.global_rank == 0:
        from lavinkit.commands.export import main as export_main
        from lavinkit.models.io import load_pretrained

        last = root / "ckpt" / "epoch=0-step=4.ckpt"
        assert last.is_dir() == (strategy != "ddp"), last
        for weights, want in (("ema", ema_a), ("raw", raw_a)):
            out = root / f"{weights}.safetensors"
            assert export_main([str(last), "--out", str(out), "--weights", weights]) == 0
            got_kind, _, got = load_pretrained(out)
            assert got_kind == kind and got.keys() == want.keys()
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=f"export {weights} {k}")
        model_cls = __import__("lavinkit.models.jdit" if kind == "jdit" else "lavinkit.models.stvae",
                               fromlist=["x"])
        model = getattr(model_cls, "JDiT" if kind == "jdit" else "STVAE").from_pretrained(root / "ema.safetensors")
        assert sum(p.numel() for p in model.parameters()) > 0
        print(f"RESUME-EXPORT-OK {kind} {strategy}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 4:
        DEVICES = int(sys.argv[4])
    if len(sys.argv) > 5:
        ACCELERATOR = sys.argv[5]
    main(*sys.argv[1:4])
