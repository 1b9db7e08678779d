"""Grouping a stream of pairs into in-context examples: k context pairs + 1 query pair of ONE task.

Policy (seeded, without replacement, task-homogeneous):

* Every task has a FIFO buffer fed by the (already shuffled) stream of checked, undecoded pairs.
* ``next_example(n)`` returns ``n = k + 1`` pairs of one task: the oldest buffer that already holds
  ``n`` pairs is emptied by ``n`` (FIFO); otherwise the stream is read until some task buffer reaches
  ``n``. The pair order is arrival order, so the query (last) is the most recent pair.
* No key appears twice in an example: a pair whose key is already in its task's buffer is dropped
  (with resampled shards the same pair can come back soon; that is a duplicate, not a new pair).
* k per batch is drawn before the batch is grouped (``draw_num_context``), so a batch with a smaller
  k does not waste pairs; buffers keep the pairs they hold between batches.
* A task that cannot fill ``n`` distinct pairs (fewer pairs than k + 1) is detected: after
  ``starve_limit`` duplicates arrive for a task without it ever reaching ``n`` pairs, or when a finite
  stream ends with no example at all, :class:`~lavinkit.data.schema.DataStreamError` names the task.
* Task weights thin the stream before grouping: a pair of task t is kept with probability
  ``w_t / max(w)`` (a task missing from the mapping has weight 1; weight 0 removes the task).

Grouping reads only keys and json (pixels are decoded after grouping, for the pairs that are used).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator, Mapping

from lavinkit.data.schema import DataStreamError, RawPair

NumContext = int | tuple[int, int]


def parse_num_context(spec: NumContext | list[int]) -> tuple[int, int]:
    """``k`` or ``(k_min, k_max)`` (inclusive) -> ``(k_min, k_max)``; raises ``ValueError`` on a bad spec."""
    if isinstance(spec, bool):
        raise ValueError(f"num_context must be an int or a (min, max) pair, got {spec!r}")
    if isinstance(spec, int):
        lo = hi = spec
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(v, int) for v in spec):
        lo, hi = spec
    else:
        raise ValueError(f"num_context must be an int or a (min, max) pair, got {spec!r}")
    if lo < 0 or hi < lo:
        raise ValueError(f"num_context: need 0 <= min <= max, got {spec!r}")
    return int(lo), int(hi)


def draw_num_context(spec: tuple[int, int], rng: random.Random) -> int:
    """k for one batch, uniform over ``[k_min, k_max]``."""
    lo, hi = spec
    return lo if lo == hi else rng.randint(lo, hi)


class TaskGrouper:
    """Per-task buffers over an iterator of :class:`RawPair` (see the module docstring for the policy).

    Args:
        pairs: the shuffled stream of checked pairs.
        starve_limit: duplicates tolerated for a task that holds fewer than ``n`` pairs before the task
            is declared too small.
        task_weights: optional ``{task: weight}`` thinning weights.
        rng: random source for thinning.
    """

    def __init__(
        self,
        pairs: Iterator[RawPair],
        *,
        starve_limit: int = 64,
        task_weights: Mapping[str, float] | None = None,
        rng: random.Random | None = None,
    ):
        self.pairs = pairs
        self.buffers: OrderedDict[str, OrderedDict[str, RawPair]] = OrderedDict()
        self.duplicates: dict[str, int] = {}
        self.starve_limit = starve_limit
        self.rng = rng or random.Random(0)
        self.keep: dict[str, float] | None = None
        if task_weights:
            top = max(task_weights.values())
            if top <= 0 or any(w < 0 for w in task_weights.values()):
                raise ValueError(f"task_weights must be >= 0 with at least one > 0, got {dict(task_weights)}")
            self.keep = {t: w / top for t, w in task_weights.items()}
            self._default_keep = 1.0 / top
        self.exhausted = False
        self.emitted = 0

    def _ready(self, n: int) -> str | None:
        for task, buf in self.buffers.items():
            if len(buf) >= n:
                return task
        return None

    def _take(self, task: str, n: int) -> list[RawPair]:
        buf = self.buffers[task]
        out = [buf.popitem(last=False)[1] for _ in range(n)]
        self.duplicates[task] = 0
        # move the task to the end so ready tasks are served round-robin, oldest first
        self.buffers.move_to_end(task)
        self.emitted += 1
        return out

    def next_example(self, n: int) -> list[RawPair] | None:
        """The next ``n`` pairs of one task (query last), or ``None`` when a finite stream is exhausted."""
        task = self._ready(n)
        if task is not None:
            return self._take(task, n)
        while not self.exhausted:
            try:
                pair = next(self.pairs)
            except StopIteration:
                self.exhausted = True
                break
            if self.keep is not None:
                p = self.keep.get(pair.task, self._default_keep)
                if p < 1.0 and self.rng.random() >= p:
                    continue
            buf = self.buffers.get(pair.task)
            if buf is None:
                buf = self.buffers[pair.task] = OrderedDict()
            if pair.key in buf:
                dups = self.duplicates.get(pair.task, 0) + 1
                self.duplicates[pair.task] = dups
                if dups > self.starve_limit and len(buf) < n:
                    raise DataStreamError(
                        f"task {pair.task!r} has only {len(buf)} distinct pairs in the stream, fewer than "
                        f"k+1 = {n} needed for one in-context example (last shard {pair.url}); lower "
                        f"num_context or add pairs to the task"
                    )
                continue
            buf[pair.key] = pair
            if len(buf) >= n:
                return self._take(pair.task, n)
        return None

    def pending(self) -> dict[str, int]:
        """Pairs waiting in each task buffer."""
        return {t: len(b) for t, b in self.buffers.items() if b}
