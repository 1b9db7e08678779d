"""JDiTModule under 2-process gloo DDP: the official layout's dead last-block parameters do not break DDP."""

from __future__ import annotations

import pytest

from tests.conftest import run_distributed_script

SCRIPT = r"""
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from lavinkit.lit import JDiTModule


class LatentExamples(IterableDataset):
    # in-context latent batches: 2 rows, k = 1 or 2 context pairs, 16-channel 1-frame latents of 4x4
    def __iter__(self):
        g = torch.Generator().manual_seed(1)
        for i in range(6):
            n = 2 + i % 2
            x = torch.randn(2, n, 16, 1, 4, 4, generator=g)
            yield {"input": x, "target": x.flip(-1), "task": ["a", "b"], "keys": [["k"] * n] * 2,
                   "num_context": n - 1, "latents": True}


def main(root):
    torch.manual_seed(0)
    # context_dropout 0.5: rows with the padded null context and rows with full context in the same batches
    module = JDiTModule("tiny", context_dropout=0.5, val_samples_per_task=0)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root)
    trainer.fit(module, train_dataloaders=DataLoader(LatentExamples(), batch_size=None))
    assert trainer.global_step == 6, trainer.global_step
    frozen = [n for n, p in module.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("dit.blocks.1.") for n in frozen), frozen
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    torch.distributed.all_gather(gathered, flat)
    assert torch.equal(gathered[0], gathered[1])
    if trainer.global_rank == 0:
        print("DDP-OK", flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # orderly gloo shutdown before the interpreter exits


if __name__ == "__main__":
    main(sys.argv[1])
"""


@pytest.mark.distributed
def test_ddp_two_processes_without_unused_parameters(tmp_path):
    """DDP with find_unused_parameters off (Lightning's default) trains, and the replicas stay identical."""
    script = tmp_path / "jdit_ddp_smoke.py"
    script.write_text(SCRIPT)
    proc = run_distributed_script(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP-OK" in proc.stdout
