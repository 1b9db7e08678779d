"""Evaluation of an in-context model per task: the prediction against the identity baseline (the query
returned unchanged), the ST-VAE ceiling (the target's reconstruction) and a context swap (the same query
answered with another task's example pairs).

    from lavinkit.evaluation import evaluate

    report = evaluate("runs/jdit/last.ckpt", task_folder="demo_data/tasks", size=(64, 64), num_pairs=2,
                      seeds=[0, 1], out="runs/eval")          # or evaluate(pipeline, shards="demo_data/val")
    print(report.to_markdown()); report.summary(); report.to_dict()

``lavinkit eval`` is the same from the command line; ``lavinkit test`` logs the test epoch's per-task table
(with the identity baseline) through :func:`format_task_table`.
"""

from lavinkit.evaluation.core import check_pipeline, default_partners, evaluate, load_pipeline, model_paths
from lavinkit.evaluation.data import EvalError, EvalTask, tasks_from_folders, tasks_from_shards
from lavinkit.evaluation.references import REFERENCES, Reference, reference_answer, register_reference
from lavinkit.evaluation.report import EvalReport, GridRow, TaskReport, format_task_table

__all__ = [
    "REFERENCES",
    "EvalError",
    "EvalReport",
    "EvalTask",
    "GridRow",
    "Reference",
    "TaskReport",
    "check_pipeline",
    "default_partners",
    "evaluate",
    "format_task_table",
    "load_pipeline",
    "model_paths",
    "reference_answer",
    "register_reference",
    "tasks_from_folders",
    "tasks_from_shards",
]
