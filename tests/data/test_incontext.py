"""In-context grouping: one task per example, no repeated key, k range honoured, query last."""

from __future__ import annotations

import random

import pytest

from lavinkit.data.incontext import TaskGrouper, draw_num_context, parse_num_context
from lavinkit.data.pipeline import DataStreamError, RawPair


def pair(task: str, key: str) -> RawPair:
    return RawPair(sample={"__key__": key, "__url__": "mem.tar"}, key=key, task=task, meta={"task": task})


def stream(tasks: dict[str, int], seed: int = 0, repeat: int = 1) -> list[RawPair]:
    items = [pair(t, f"{t}-{i}") for _ in range(repeat) for t, n in tasks.items() for i in range(n)]
    random.Random(seed).shuffle(items)
    return items


@pytest.mark.parametrize(("spec", "expected"), [(2, (2, 2)), ((1, 3), (1, 3)), ([0, 0], (0, 0))])
def test_parse_num_context(spec, expected):
    assert parse_num_context(spec) == expected


@pytest.mark.parametrize("spec", [-1, (3, 1), (1, 2, 3), "2", True])
def test_parse_num_context_rejects(spec):
    with pytest.raises(ValueError, match="num_context"):
        parse_num_context(spec)


def test_draw_num_context_covers_range():
    rng = random.Random(0)
    seen = {draw_num_context((1, 3), rng) for _ in range(200)}
    assert seen == {1, 2, 3}


def test_examples_are_task_homogeneous_without_repeats_and_query_last():
    items = stream({"a": 40, "b": 25, "c": 33}, repeat=2)  # every pair twice: duplicates must be dropped
    order = {id(p): i for i, p in enumerate(items)}
    grouper = TaskGrouper(iter(items))
    rng = random.Random(1)
    count = 0
    while True:
        n = draw_num_context((0, 4), rng) + 1
        ex = grouper.next_example(n)
        if ex is None:
            break
        count += 1
        assert len(ex) == n
        assert len({p.task for p in ex}) == 1
        assert len({p.key for p in ex}) == n
        # FIFO within the task buffer: arrival order, the query (last) arrived last
        assert [order[id(p)] for p in ex] == sorted(order[id(p)] for p in ex)
    assert count > 20


def test_smaller_k_served_from_full_buffers_first():
    items = [
        pair("a", "a0"),
        pair("a", "a1"),
        pair("a", "a2"),
        *(pair("b", f"b{i}") for i in range(4)),
        pair("c", "c0"),
    ]
    it = iter(items)
    grouper = TaskGrouper(it)
    assert [p.key for p in grouper.next_example(4)] == ["b0", "b1", "b2", "b3"]
    assert grouper.pending() == {"a": 3}
    assert [p.key for p in grouper.next_example(2)] == ["a0", "a1"]  # from the buffer: nothing read
    assert next(it).key == "c0"


def test_task_too_small_for_k_plus_one_is_named():
    items = stream({"big": 30, "tiny": 2}, repeat=200)
    grouper = TaskGrouper(iter(items), starve_limit=50)
    with pytest.raises(DataStreamError, match=r"task 'tiny' has only 2 distinct pairs.*k\+1 = 4"):
        while grouper.next_example(4) is not None:
            pass


def test_task_weights_thin_and_zero_removes():
    items = stream({"a": 300, "b": 300, "c": 300})
    grouper = TaskGrouper(iter(items), task_weights={"a": 1.0, "b": 0.25, "c": 0.0}, rng=random.Random(0))
    tasks = []
    while (ex := grouper.next_example(1)) is not None:
        tasks.append(ex[0].task)
    assert "c" not in tasks
    assert 0.1 < tasks.count("b") / tasks.count("a") < 0.45


def test_task_weights_validated():
    with pytest.raises(ValueError, match="task_weights"):
        TaskGrouper(iter([]), task_weights={"a": -1.0})


def test_grouping_in_a_datamodule_stream(demo_data):
    from lavinkit.data import ImagePairDataModule

    dm = ImagePairDataModule(
        demo_data / "train" / "images-*.tar", batch_size=4, num_context=(0, 3), steps_per_epoch=12, seed=3
    )
    ks = set()
    for batch in dm.train_dataloader():
        k = batch["num_context"]
        ks.add(k)
        assert 0 <= k <= 3
        assert batch["input"].shape[1] == k + 1 == len(batch["keys"][0])
        for task, keys in zip(batch["task"], batch["keys"]):
            assert len(set(keys)) == len(keys)
            assert all(f"-{task}-" in key for key in keys)  # demo keys are <split>-<task>-<index>
    assert len(ks) >= 2
