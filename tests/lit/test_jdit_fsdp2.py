"""JDiTModule under FSDP2 on CPU (ModelParallelStrategy, 2 gloo processes): blocks sharded, replicas in step, EMA
sharded."""

from __future__ import annotations

import pytest

from tests.conftest import run_distributed_script

SCRIPT = r"""
import sys

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, IterableDataset

from lavinkit.lit import JDiTModule
from lavinkit.lit.callbacks import EMA


class LatentExamples(IterableDataset):
    def __iter__(self):
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            x = torch.randn(2, 2, 16, 1, 4, 4, generator=g)
            yield {"input": x, "target": x.flip(-1), "task": ["a", "b"], "keys": [["k", "q"]] * 2,
                   "num_context": 1, "latents": True}


def main(root):
    torch.manual_seed(0)
    module = JDiTModule("tiny", context_dropout=0.5, val_samples_per_task=0)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root)
    trainer.fit(module, train_dataloaders=DataLoader(LatentExamples(), batch_size=None))
    assert trainer.global_step == 4, trainer.global_step
    params = dict(module.dit.named_parameters())
    assert all(isinstance(p, DTensor) for p in params.values()), "parameters are not sharded"
    full = torch.cat([p.full_tensor().flatten() for p in params.values()])
    assert torch.isfinite(full).all()
    gathered = [torch.zeros_like(full) for _ in range(2)]
    torch.distributed.all_gather(gathered, full)
    assert torch.equal(gathered[0], gathered[1])
    # the sharded model was trained: the zero-initialised final layer moved
    assert params["final.linear.weight"].full_tensor().abs().max() > 0
    # the EMA of a sharded model keeps this rank's shards and gathers full tensors on request (collective)
    ema = EMA(decay=0.9)
    ema._build(module)
    ema.update()
    assert ema.shadow["final.linear.weight"].shape == params["final.linear.weight"].to_local().shape
    full_ema = ema.ema_state_dict()
    assert torch.equal(full_ema["final.linear.weight"], params["final.linear.weight"].full_tensor())
    if trainer.global_rank == 0:
        print("FSDP2-OK", flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # orderly gloo shutdown before the interpreter exits


if __name__ == "__main__":
    main(sys.argv[1])
"""


@pytest.mark.distributed
def test_fsdp2_two_processes(tmp_path):
    script = tmp_path / "jdit_fsdp2_smoke.py"
    script.write_text(SCRIPT)
    proc = run_distributed_script(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FSDP2-OK" in proc.stdout
