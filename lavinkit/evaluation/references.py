"""Reference answers of tasks for arbitrary query inputs: what task B "would produce" on a query of task A.

The context-swap check feeds a query of task A with example pairs of task B and asks whether the answer
moved toward B's answer for that query. That needs B's answer on an input that is not B's own input, which
is only defined for some tasks:

* tasks whose input IS the clean source (``edge_detection``, ``horizontal_flip``): the answer is the demo
  transform applied to the query (its target part);
* restoration tasks whose target is the clean source (denoising, colorization, ...): restoring an already
  clean image changes nothing, so the answer is the query itself;
* other tasks (``frame_prediction``, a user's own tasks): no reference; register one with
  :func:`register_reference`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["REFERENCES", "Reference", "reference_answer", "register_reference"]


@dataclass(frozen=True)
class Reference:
    """How a task answers an arbitrary query.

    Attributes:
        kind: ``"transform"`` (the task's transform of the query), ``"unchanged"`` (the query itself) or a
            user's label.
        fn: uint8 ``[T, H, W, 3]`` query -> uint8 ``[T, H, W, 3]`` answer.
    """

    kind: str
    fn: Callable[[np.ndarray], np.ndarray]


def _unchanged(query: np.ndarray) -> np.ndarray:
    return query


def _demo_target(task: str) -> Callable[[np.ndarray], np.ndarray]:
    def answer(query: np.ndarray) -> np.ndarray:
        from lavinkit.data.demo import TASKS

        # these transforms draw nothing from the generator; one is passed because the signature asks for it
        _, target, _ = TASKS[task].fn(query, np.random.default_rng(0))
        return np.ascontiguousarray(target)

    return answer


RESTORATION_TASKS = ("colorization", "denoising", "deblurring", "inpainting", "super_resolution",
                     "low_light_enhancement", "jpeg_artifact_removal", "video_colorization", "video_deblurring",
                     "video_denoising")
SOURCE_INPUT_TASKS = ("edge_detection", "horizontal_flip")

REFERENCES: dict[str, Reference] = {
    **{task: Reference("unchanged", _unchanged) for task in RESTORATION_TASKS},
    **{task: Reference("transform", _demo_target(task)) for task in SOURCE_INPUT_TASKS},
}


def register_reference(task: str, fn: Callable[[np.ndarray], np.ndarray], kind: str = "custom") -> None:
    """Give ``task`` a reference answer (replaces an existing one); ``fn`` maps uint8 ``[T, H, W, 3]`` to the same."""
    REFERENCES[task] = Reference(kind, fn)


def reference_answer(task: str, query: np.ndarray) -> np.ndarray | None:
    """``task``'s answer for ``query`` (uint8 ``[T, H, W, 3]``), or ``None`` when the task has no reference."""
    ref = REFERENCES.get(task)
    if ref is None:
        return None
    out = np.asarray(ref.fn(query))
    if out.shape != query.shape or out.dtype != np.uint8:
        raise ValueError(f"reference answer of task {task!r}: expected uint8 {list(query.shape)}, "
                         f"got {out.dtype} {list(out.shape)}")
    return out
