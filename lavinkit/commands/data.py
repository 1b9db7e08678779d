"""``lavinkit data demo|pack|validate|inspect``: build, pack, check and look at pair shards.

Examples::

    lavinkit data demo --out data/demo                       # offline demo set (train/val shards + tasks/)
    lavinkit data pack --task-folders release/tasks --out data/mine --size 64
    lavinkit data pack --videos clips/ --transform video_deblurring --frames 17 --out data/vid
    lavinkit data pack --videos pairs/ --task my_task --out data/vid  # NAME_input.mp4 + NAME_target.mp4
    lavinkit data validate data/demo/train data/demo/val     # every problem with shard and key; exit 1 if any
    lavinkit data inspect data/demo/train --out sheet.png    # counts per task + contact sheet

Every subcommand takes ``--config file.yaml`` and ``--help``.
"""

from __future__ import annotations

import sys
import time

from jsonargparse import ActionConfigFile, ArgumentParser


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lavinkit data", description="Build, pack, validate and inspect pair shards.")
    sub = parser.add_subcommands(dest="subcommand")

    demo = ArgumentParser(description="Build the offline demo data set from images and clips shipped in pip wheels "
                          "(needs the demo extra). Tasks: see lavinkit.data.demo.TASKS.")
    demo.add_argument("--config", action=ActionConfigFile)
    demo.add_argument("--out", type=str, required=True, help="output folder (train/, val/, tasks/, demo.json)")
    demo.add_argument("--image-size", type=int, default=64, help="square side, multiple of 16")
    demo.add_argument("--clip-frames", type=int, default=17, help="frames per clip, 1 + 4k")
    demo.add_argument("--image-pairs-per-task", type=int, default=200, help="train pairs per image task")
    demo.add_argument("--clip-pairs-per-task", type=int, default=24, help="train pairs per video task")
    demo.add_argument("--val-image-pairs-per-task", type=int | None, default=None, help="default max(4, n // 4)")
    demo.add_argument("--val-clip-pairs-per-task", type=int | None, default=None, help="default max(2, m // 4)")
    demo.add_argument("--image-ext", type=str, default="png", help="png or jpg")
    demo.add_argument("--clip-ext", type=str, default="mp4", help="mp4 or npy")
    demo.add_argument("--samples-per-shard", type=int | None, default=None, help="default: ~4 shards per split")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--progress", type=bool, default=True, help="show progress bars with an ETA")
    sub.add_subcommand("demo", demo, help="build the offline demo data set")

    pack = ArgumentParser(description="Pack official-style task folders (root/<task>/NAME_input.png + "
                          "NAME_target.png) or a folder of videos into pair shards with an index.json.")
    pack.add_argument("--config", action=ActionConfigFile)
    pack.add_argument("--out", type=str, required=True, help="output folder for the shards and index.json")
    pack.add_argument("--task-folders", type=str | None, default=None, help="root with one folder per task")
    pack.add_argument("--videos", type=str | None, default=None, help="folder of videos to cut into clips")
    pack.add_argument("--tasks", type=list[str] | str | None, default=None, help="with --task-folders: only these tasks")
    pack.add_argument("--task", type=str | None, default=None, help="with --videos: the task name")
    pack.add_argument("--transform", type=str | None, default=None,
                      help="with --videos: make inputs from each video with this demo transform (e.g. video_deblurring)")
    pack.add_argument("--frames", type=int, default=17, help="with --videos: frames per clip, 1 + 4k")
    pack.add_argument("--stride", type=int | None, default=None, help="with --videos: frames between clip starts")
    pack.add_argument("--fps", type=float | None, default=None,
                      help="with --videos: resample every video to FPS (the frame on screen every 1/FPS s) before "
                           "cutting clips; paired videos then need equal durations only (default: every frame, and "
                           "pairs must match in frame count, frame rate and duration)")
    pack.add_argument("--size", type=int | None, default=None,
                      help="resize (short side) + center-crop to SIZE x SIZE; videos default to 64")
    pack.add_argument("--image-ext", type=str, default="png", help="png, jpg, webp or tiff")
    pack.add_argument("--clip-ext", type=str, default="mp4", help="mp4 or npy")
    pack.add_argument("--seed", type=int, default=0, help="seed of --transform")
    pack.add_argument("--prefix", type=str | None, default=None, help="shard name prefix (images / videos)")
    pack.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    pack.add_argument("--maxsize", type=float, default=256e6, help="bytes per shard (approximately) at most")
    pack.add_argument("--progress", type=bool, default=True, help="show a progress bar with an ETA")
    sub.add_subcommand("pack", pack, help="pack task folders or videos into shards")

    validate = ArgumentParser(description="Check shards against the sample schema; prints every problem with its "
                              "shard and key and exits 1 if there is any.")
    validate.add_argument("--config", action=ActionConfigFile)
    validate.add_argument("urls", nargs="+", type=str, help="shards, brace patterns, globs, folders or index.json")
    validate.add_argument("--tasks", type=list[str] | str | None, default=None,
                          help="known tasks (default: from the index.json next to the shards)")
    validate.add_argument("--check-shape", type=bool, default=True, help="report T != 1 + 4k and sizes not multiple of 16")
    validate.add_argument("--decode", type=bool, default=True, help="decode inputs and targets")
    validate.add_argument("--max-lines", type=int, default=200, help="problems printed at most")
    validate.add_argument("--report", type=str | None, default=None, help="also write the report as JSON here")
    sub.add_subcommand("validate", validate, help="report every problem in shards")

    inspect = ArgumentParser(description="Print pairs per task and draw a contact sheet (input | target per pair).")
    inspect.add_argument("--config", action=ActionConfigFile)
    inspect.add_argument("urls", nargs="+", type=str, help="shards, brace patterns, globs, folders or index.json")
    inspect.add_argument("--out", type=str | None, default=None, help="contact sheet PNG")
    inspect.add_argument("--pairs-per-task", type=int, default=4)
    inspect.add_argument("--frames", type=int, default=3, help="frames shown per clip")
    sub.add_subcommand("inspect", inspect, help="counts per task and a contact sheet")
    return parser


def _split_names(names: list[str] | str | None) -> list[str] | None:
    """``[a,b]``, ``a,b`` or repeated ``--tasks+ a`` -> ``["a", "b"]``."""
    if names is None:
        return None
    names = [names] if isinstance(names, str) else names
    return [n.strip() for item in names for n in item.split(",") if n.strip()]


def _demo(a) -> int:
    from lavinkit.data.demo import TASKS, build_demo
    from lavinkit.data.pack import read_index

    start = time.perf_counter()
    out = build_demo(a.out, image_size=a.image_size, clip_frames=a.clip_frames,
                     image_pairs_per_task=a.image_pairs_per_task, clip_pairs_per_task=a.clip_pairs_per_task,
                     val_image_pairs_per_task=a.val_image_pairs_per_task,
                     val_clip_pairs_per_task=a.val_clip_pairs_per_task, image_ext=a.image_ext, clip_ext=a.clip_ext,
                     samples_per_shard=a.samples_per_shard, seed=a.seed, progress=a.progress)
    took = time.perf_counter() - start
    for split in ("train", "val"):
        index = read_index(out / split)
        print(f"{split}: {index['num_samples']} pairs in {len(index['shards'])} shards -> {out / split}")
    print(f"{len(TASKS)} tasks, task folders for `lavinkit infer` in {out / 'tasks'}; built in {took:.1f} s")
    return 0


def _pack(a) -> int:
    from lavinkit.data.pack import PackOptionError, pack_task_folders, pack_videos, read_index

    if (a.task_folders is None) == (a.videos is None):
        raise PackOptionError("give exactly one of --task-folders DIR or --videos DIR")
    if a.task_folders is not None:
        for opt, value in (("--task", a.task), ("--transform", a.transform)):
            if value is not None:
                raise PackOptionError(f"{opt} is for --videos; task folders take their task names from the folder names")
        path = pack_task_folders(a.task_folders, a.out, tasks=_split_names(a.tasks), size=a.size,
                                 image_ext=a.image_ext, prefix=a.prefix or "images", maxcount=a.maxcount,
                                 maxsize=a.maxsize, progress=a.progress)
    else:
        if a.tasks is not None:
            raise PackOptionError("--tasks is for --task-folders; use --task NAME with --videos")
        path = pack_videos(a.videos, a.out, task=a.task, transform=a.transform, frames=a.frames, stride=a.stride,
                           size=64 if a.size is None else a.size, clip_ext=a.clip_ext, seed=a.seed, fps=a.fps,
                           prefix=a.prefix or "videos", maxcount=a.maxcount, maxsize=a.maxsize, progress=a.progress)
    index = read_index(path)
    counts = ", ".join(f"{t} {v['count']}" for t, v in index["tasks"].items())
    print(f"packed {index['num_samples']} pairs into {len(index['shards'])} shard(s) ({counts}); index: {path}")
    return 0


def _validate(a) -> int:
    import json

    from lavinkit.data.validate import validate_shards

    report = validate_shards(a.urls, tasks=_split_names(a.tasks), check_shape=a.check_shape, decode=a.decode)
    print(report.format(max_lines=a.max_lines))
    if a.report:
        with open(a.report, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
    return 0 if report.ok else 1


def _inspect(a) -> int:
    from lavinkit.data.inspect import contact_sheet, inspect_shards
    from lavinkit.data.shards import resolve_urls

    result = inspect_shards(resolve_urls(a.urls, what="urls"), pairs_per_task=a.pairs_per_task)
    print(result.table())
    for err in result.errors[:20]:
        print(f"warning: {err}", file=sys.stderr)
    if len(result.errors) > 20:
        print(f"warning: ... {len(result.errors) - 20} more (run `lavinkit data validate`)", file=sys.stderr)
    if a.out:
        print(f"contact sheet: {contact_sheet(result, a.out, frames=a.frames)}")
    return 0 if result.samples else 1


def main(argv: list[str] | None = None) -> int:
    """Run ``lavinkit data <subcommand>``; returns the exit code (2 for usage errors: bad options, missing input
    paths; 1 for failures: problems found by ``validate``, unusable input data)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        cfg = parser.parse_args(argv)
    except SystemExit as exc:  # jsonargparse printed the usage error (or --help)
        return int(exc.code or 0)
    name = cfg.subcommand
    args = cfg[name]
    from lavinkit.data.pack import PackOptionError

    try:
        return {"demo": _demo, "pack": _pack, "validate": _validate, "inspect": _inspect}[name](args)
    except (ImportError, RuntimeError, ValueError, OSError) as err:
        # a bad option or a missing input path is a usage error (2); unusable input data is a failure (1)
        usage = isinstance(err, (PackOptionError, FileNotFoundError, NotADirectoryError)) or (
            name == "demo" and isinstance(err, ValueError)  # build_demo's ValueErrors name the option at fault
        )
        print(f"lavinkit data {name}: error: {err}", file=sys.stderr)
        return 2 if usage else 1
