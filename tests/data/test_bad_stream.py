"""Bad input in a stream: skipped and counted, or a clear error naming the shard, key or task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from lavinkit.data import DataStreamError, ImagePairDataModule, VideoPairDataModule, make_sample

RNG = np.random.default_rng(0)


def good_pairs(task: str, n: int, *, frames: int = 1, size: int = 16, ext: str = "npy") -> list[dict]:
    out = []
    for i in range(n):
        x = RNG.integers(0, 256, (2, frames, size, size, 3), dtype=np.uint8)
        out.append(make_sample(f"{task}-{i:03d}", task, x[0], x[1], clip_ext=ext))
    return out


def write(path, samples) -> str:
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)
    return str(path)


def bad_sample(kind: str) -> dict:
    good = good_pairs("t", 1)[0]
    sample = {k: v for k, v in good.items()}
    if kind == "undecodable":
        sample["input.png"] = b"\x89PNG not really"
    elif kind == "missing-member":
        del sample["target.png"]
    elif kind == "bad-key":
        sample["__key__"] = "bad key!"
    elif kind == "no-task":
        sample["json"] = json.dumps({"modality": "image"}).encode()
    sample.setdefault("__key__", "t-bad")
    if sample["__key__"] == "t-000":
        sample["__key__"] = "t-bad"
    return sample


REASONS = {
    "undecodable": "input.png",
    "missing-member": "missing member target",
    "bad-key": "contains characters|outside",
    "no-task": "task",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_bad_sample_is_skipped_and_counted(tmp_path, kind):
    shard = write(tmp_path / "pairs-000000.tar", good_pairs("t", 6) + [bad_sample(kind)])
    dm = ImagePairDataModule(shard, batch_size=2, num_context=1, steps_per_epoch=8, seed=0)
    for batch in dm.train_dataloader():
        assert not any("bad" in k for row in batch["keys"] for k in row)
    assert dm.skipped >= 1
    assert dm.skipped_by_shard == {shard: dm.skipped}
    url, key, reason = dm.last_skipped
    assert url == shard
    assert kind == "bad-key" or key == "t-bad"
    assert any(word in reason for word in REASONS[kind].split("|"))


def test_wrong_frame_count_skipped_in_a_video_stream(tmp_path):
    samples = good_pairs("v", 5, frames=5)
    odd = good_pairs("v", 1, frames=4)[0]
    odd["__key__"] = "v-short"
    shard = write(tmp_path / "clips-000000.tar", samples + [odd])
    dm = VideoPairDataModule(shard, batch_size=1, num_context=1, steps_per_epoch=6)
    for batch in dm.train_dataloader():
        assert batch["input"].shape[3] == 5
    assert dm.skipped >= 1 and dm.last_skipped[1] == "v-short"
    assert "4 frames" in dm.last_skipped[2]


def test_corrupt_tar_is_skipped_naming_the_shard(tmp_path):
    good = write(tmp_path / "pairs-000000.tar", good_pairs("t", 8))
    broken = write(tmp_path / "pairs-000001.tar", good_pairs("u", 8))
    data = open(broken, "rb").read()
    open(broken, "wb").write(data[: len(data) // 2 + 100])  # truncated mid-member
    dm = ImagePairDataModule([good, broken], batch_size=2, num_context=1, steps_per_epoch=10, seed=1)
    assert len(list(dm.train_dataloader())) == 10
    assert broken in dm.skipped_by_shard and good not in dm.skipped_by_shard


@pytest.mark.parametrize("workers", [0, 1])
def test_max_skipped_stops_with_a_clear_message(tmp_path, workers):
    bad = [bad_sample("undecodable") | {"__key__": f"t-bad{i}"} for i in range(6)]
    shard = write(tmp_path / "pairs-000000.tar", good_pairs("t", 2) + bad)
    dm = ImagePairDataModule(
        shard, batch_size=2, num_context=1, steps_per_epoch=20, max_skipped=2, num_workers=workers
    )
    with pytest.raises(
        DataStreamError, match=r"max_skipped=2.*shard .*pairs-000000.tar, key 't-bad\d'"
    ) as info:
        list(dm.train_dataloader())
    assert type(info.value) is DataStreamError  # raised in the main process, not a wrapped worker traceback
    assert "Traceback" not in str(info.value)


def test_task_too_small_without_index_names_the_task(tmp_path):
    shard = write(tmp_path / "pairs-000000.tar", good_pairs("big", 10) + good_pairs("tiny", 2))
    dm = ImagePairDataModule(shard, batch_size=2, num_context=3, steps_per_epoch=100, shuffle_buffer=0)
    with pytest.raises(DataStreamError, match=r"task 'tiny' has only 2 distinct pairs.*k\+1 = 4"):
        list(dm.train_dataloader())


def test_empty_shards_stop_instead_of_spinning(tmp_path):
    shard = write(tmp_path / "pairs-000000.tar", [])
    dm = ImagePairDataModule(shard, batch_size=1, num_context=0, steps_per_epoch=2)
    with pytest.raises(DataStreamError, match="no readable sample in the last"):
        list(dm.train_dataloader())


def test_validation_too_small_fails_at_setup(tmp_path):
    shard = write(tmp_path / "pairs-000000.tar", good_pairs("t", 3))
    dm = ImagePairDataModule(val_urls=shard, batch_size=2, num_context=2)
    with pytest.raises(
        ValueError, match=r"val \(image\): no rank can form one batch of 2 examples of 3 pairs"
    ):
        dm.val_dataloader()
