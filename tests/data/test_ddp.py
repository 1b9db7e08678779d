"""CPU DDP (2 processes, gloo) over 3 uneven shards: equal steps, per-rank streams, equal finite validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lavinkit.data import make_sample
from tests.conftest import run_distributed_script

SCRIPT = Path(__file__).with_name("ddp_stream_script.py")


def write_uneven(folder: Path, sizes: list[int], tasks=("a", "b", "c"), seed=0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    i = 0
    for s, n in enumerate(sizes):
        with wds.TarWriter(str(folder / f"pairs-{s:06d}.tar")) as w:
            for _ in range(n):
                task = tasks[i % len(tasks)]
                x = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
                w.write(make_sample(f"{folder.name}-{task}-{i:04d}", task, x[0], x[1]))
                i += 1


@pytest.mark.distributed
def test_ddp_two_ranks_uneven_shards(tmp_path):
    write_uneven(tmp_path / "data" / "train", [30, 12, 6])
    write_uneven(tmp_path / "data" / "val", [18, 9, 3], seed=1)
    out = tmp_path / "out"
    out.mkdir()
    # the timeout only guards against a hung process group; speed is measured by `lavinkit bench`, not here
    proc = run_distributed_script(SCRIPT, tmp_path / "data", out, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["dm_rank"], r["world"]) for r in ranks] == [(0, 0, 2), (1, 1, 2)]

    # equal step counts whatever the shard sizes, and a different stream on each rank
    assert len(ranks[0]["train"]) == len(ranks[1]["train"]) == 10
    assert [e for e, _, _ in ranks[0]["train"]] == [0] * 5 + [1] * 5
    assert ranks[0]["train"] != ranks[1]["train"]
    for r in ranks:
        for _, k, keys in r["train"]:
            assert all(len(row) == k + 1 for row in keys)

    # validation: finite, equal length on both ranks, identical every epoch, disjoint between ranks
    v0, v1 = ranks[0]["val"], ranks[1]["val"]
    assert len(v0) == len(v1) == 2
    assert len(v0[0]) == len(v1[0]) > 0
    assert v0[0] == v0[1] and v1[0] == v1[1]
    keys0 = {k for batch in v0[0] for row in batch for k in row}
    keys1 = {k for batch in v1[0] for row in batch for k in row}
    assert not keys0 & keys1
