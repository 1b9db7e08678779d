"""``lavinkit eval``: per-task scores of an in-context model against the identity baseline, the ST-VAE ceiling
and a context swap.

    lavinkit eval --checkpoint runs/jdit/last.ckpt --task-folder demo_data/tasks --size 64x64 \\
        --num-pairs 2 --queries-per-task 2 --seeds [0,1] --out runs/eval

* Data: ``--task-folder`` (a folder of task folders of ``NAME_input.EXT`` / ``NAME_target.EXT``, images or clips,
  read like ``lavinkit infer``) or ``--shards`` (pair shards: urls, a folder of shards or a glob). The last
  ``--queries-per-task`` pairs of every task (by name / key) are queries and never examples.
* For every query and seed (``--seeds``): ``--num-pairs`` examples drawn without replacement, the prediction,
  and the same query with a partner task's examples (``--swap-with '{task: partner}'``; default: task ``i`` of
  the ``n`` evaluated tasks of its modality pairs with ``(i + n // 2) % n``).
* Printed: a per-task table (prediction PSNR/SSIM, identity PSNR, ceiling PSNR, beats-identity dB, swapped
  PSNR, swap shift dB, ...) and a summary line. Written to ``--out``: ``eval.json`` (every per-query number,
  per-task means, settings), ``eval.md`` and ``eval_grid.png`` (one row per task: query | pairs | prediction |
  target | identity | swapped). The same command gives the same ``eval.json``.
* ``--lpips-weights``: local torchvision weights of the LPIPS backbone (``--lpips-net``); LPIPS is skipped
  without them (nothing is downloaded).

The model options are those of ``lavinkit infer``: ``--checkpoint`` (a JDiTModule ``.ckpt``, its recorded
ST-VAE unless ``--vae``) or ``--dit`` with ``--vae``, and the sampling options.
"""

from __future__ import annotations

import sys
from typing import Literal


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lavinkit.commands.infer import add_pipeline_arguments

    p = ArgumentParser(prog="lavinkit eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action=ActionConfigFile, help="YAML/JSON file with any of these options")
    p.add_argument("--task-folder", type=str | None, default=None,
                   help="folder of task folders holding NAME_input.EXT / NAME_target.EXT (images or clips)")
    p.add_argument("--shards", type=str | None, default=None,
                   help="pair shards: WebDataset urls (brace expansion), a folder of shards or a glob")
    p.add_argument("--tasks", type=list[str] | None, default=None, help="tasks to evaluate, in order (default: all)")
    p.add_argument("--queries-per-task", type=int, default=1,
                   help="held-out pairs per task used as queries (the last ones by name / key)")
    p.add_argument("--seeds", type=list[int], default=[0], help="seeds; each draws its own example pairs and noise")
    p.add_argument("--swap-with", type=dict[str, str] | None, default=None,
                   help="swap partners, e.g. '{denoising: horizontal_flip}' (default: the task half a round away)")
    p.add_argument("--lpips-weights", type=str | None, default=None,
                   help="local torchvision weights of the LPIPS backbone (LPIPS is skipped without them)")
    p.add_argument("--lpips-net", type=Literal["alex", "vgg", "squeeze"], default="alex")
    p.add_argument("--out", type=str, required=True, help="output folder (eval.json, eval.md, eval_grid.png)")
    p.add_argument("--progress", type=bool, default=True, help="show a progress bar")
    add_pipeline_arguments(p)
    return p


def run(args):
    """Evaluate and write the report; returns the :class:`lavinkit.evaluation.EvalReport`."""
    from lavinkit.commands.infer import pipeline_options, resolve_model_paths
    from lavinkit.evaluation import evaluate

    dit_path, vae_path = resolve_model_paths(args.checkpoint, args.dit, args.vae)
    report = evaluate(
        dit_path, vae=vae_path, task_folder=args.task_folder, shards=args.shards, tasks=args.tasks,
        num_pairs=args.num_pairs, queries_per_task=args.queries_per_task, seeds=args.seeds, size=args.size,
        max_frames=args.max_frames, swap_with=args.swap_with, lpips_weights=args.lpips_weights,
        lpips_net=args.lpips_net, out=args.out, progress=args.progress, use_ema=not args.no_ema,
        **pipeline_options(args),
    )  # fmt: skip
    print(report.to_text(), flush=True)
    print(f"written: {args.out}/eval.json, eval.md, eval_grid.png", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    from lavinkit.commands.infer import InferError
    from lavinkit.evaluation import EvalError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except (EvalError, InferError, FileNotFoundError) as err:
        print(f"lavinkit eval: error: {err}", file=sys.stderr)
        return 2
    return 0
