"""``lavinkit data validate``: read pair shards and report every problem, with its shard and key.

Problem kinds (``Problem.kind``):

=================  ==========================================================================
missing-shard      the url does not exist / cannot be opened
corrupt-tar        not a tar, or truncated (samples read before the damage are still checked)
empty-shard        a tar without samples
index-mismatch     the sample count differs from the shard's entry in ``index.json``
bad-key            a key with a dot (WebDataset would split it) or characters outside [A-Za-z0-9_-]
duplicate-key      the same key twice in a shard
missing-member     no ``input.<ext>``, ``target.<ext>`` or ``json``
duplicate-member   several inputs (e.g. ``input.png`` and ``input.jpg``) or targets
unknown-member     a member that is not part of the schema
bad-extension      an input/target extension that is not png/jpg/jpeg/webp/mp4/npy
bad-json           json that does not parse, or is not an object
missing-task       json without a non-empty string ``"task"``
unknown-task       a task not in ``--tasks`` (or in the ``index.json`` next to the shard)
undecodable        an input/target file that cannot be decoded
size-mismatch      input and target differ in frames, height or width
frames             T is not 1 + 4k
size-multiple      height or width not a multiple of 16
meta-mismatch      json frames/height/width disagree with the decoded pixels
=================  ==========================================================================
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lavinkit.data.pack import INDEX_NAME
from lavinkit.data.schema import (
    MEMBERS,
    SampleError,
    decode_member,
    key_problem,
    parse_meta,
    shape_problems,
    split_members,
)

_KNOWN_SUFFIX = re.compile(r"^(?P<key>[^/]*?)\.(?P<suffix>(?:input|target)\.[A-Za-z0-9]+|json)$", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    """One problem: ``key`` is ``None`` for shard-level problems."""

    url: str
    key: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = self.url if self.key is None else f"{self.url} [{self.key}]"
        return f"{where}: {self.kind}: {self.message}"


@dataclass
class ValidationReport:
    """What :func:`validate_shards` found."""

    urls: list[str]
    problems: list[Problem] = field(default_factory=list)
    samples: int = 0
    tasks: Counter = field(default_factory=Counter)
    samples_per_shard: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> Counter:
        """Number of problems per kind."""
        return Counter(p.kind for p in self.problems)

    def format(self, max_lines: int | None = 200) -> str:
        """Human-readable report: one line per problem, then a summary."""
        lines = [str(p) for p in self.problems[:max_lines]]
        if max_lines is not None and len(self.problems) > max_lines:
            lines.append(f"... {len(self.problems) - max_lines} more problems")
        summary = f"{len(self.urls)} shard(s), {self.samples} sample(s), {len(self.tasks)} task(s): "
        if self.ok:
            summary += "OK"
        else:
            summary += f"{len(self.problems)} problem(s) (" + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds().items())) + ")"
        return "\n".join(lines + [summary])

    def to_dict(self) -> dict:
        return {"ok": self.ok, "urls": self.urls, "samples": self.samples, "tasks": dict(sorted(self.tasks.items())),
                "samples_per_shard": self.samples_per_shard,
                "problems": [{"url": p.url, "key": p.key, "kind": p.kind, "message": p.message} for p in self.problems]}


def expand_shard_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand shard specs: brace patterns (``a-{000000..000003}.tar``), globs, folders (their ``*.tar``)
    and ``index.json`` files (the shards they list). Other strings (missing files, ``pipe:``, http) pass as-is."""
    import braceexpand

    from lavinkit.data.pack import index_urls

    out: list[str] = []
    for spec in [urls] if isinstance(urls, str) else urls:
        for url in braceexpand.braceexpand(str(spec)):
            path = Path(url)
            if path.is_dir():
                out += sorted(str(p) for p in path.iterdir() if p.name.endswith((".tar", ".tar.gz", ".tgz")))
            elif path.name == INDEX_NAME and path.is_file():
                out += index_urls(path)
            elif any(c in url for c in "*?[") and not path.exists():
                out += sorted(glob.glob(url)) or [url]
            else:
                out.append(url)
    return out


def _open(url: str):
    if "://" in url or url.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: key = folder + basename up to its first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix if dot else ""


def iter_raw_samples(url: str) -> Iterator[tuple[dict | None, Problem | None]]:
    """Yield ``(sample, None)`` per group of consecutive members with the same key (``__key__``, ``__url__``,
    ``__names__`` = the full member names), and ``(None, Problem)`` for a shard that cannot be read."""
    try:
        stream = _open(url)
    except (FileNotFoundError, IsADirectoryError) as err:
        yield None, Problem(url, None, "missing-shard", f"cannot open shard: {err.strerror or err}")
        return
    except OSError as err:
        yield None, Problem(url, None, "missing-shard", f"cannot open shard: {err}")
        return
    current: dict | None = None
    last_key = None
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tf:
            for ti in tf:
                if not ti.isfile():
                    continue
                key, suffix = _split_name(ti.name)
                data = tf.extractfile(ti).read()
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current, None
                    current = {"__key__": key, "__url__": url, "__names__": {}}
                current[suffix] = data
                current["__names__"][suffix] = ti.name
                last_key = key
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        # the group being read when the damage hit is incomplete: it is reported with the damage, not checked
        after = f" in or after key {last_key!r}" if last_key is not None else ""
        msg = str(err) or type(err).__name__
        if msg == "empty file":
            yield None, Problem(url, None, "empty-shard", "the file is empty (0 bytes)")
        else:
            yield None, Problem(url, None, "corrupt-tar", f"unreadable tar{after} ({msg}); truncated or not a tar file")
        return
    if current is not None:
        yield current, None


def check_sample(sample: dict, *, tasks: set[str] | None = None, check_shape: bool = True,
                 decode: bool = True) -> tuple[list[Problem], str | None]:
    """All problems of one raw sample, and its task (``None`` if unknown)."""
    url, key = sample.get("__url__", "?"), sample["__key__"]
    names = sample.get("__names__", {})
    members = {k: v for k, v in sample.items() if not k.startswith("__")}
    problems: list[Problem] = []

    def add(kind, msg, k=key):
        problems.append(Problem(url, k, kind, msg))

    # a dot in the real key shows up as a suffix like "b.input.png" under key "a"
    dotted: dict[str, list[str]] = {}
    for suffix in list(members):
        m = _KNOWN_SUFFIX.match(suffix)
        if m and m["key"]:
            dotted.setdefault(f"{key}.{m['key']}", []).append(names.get(suffix, suffix))
            members.pop(suffix)
    for real, files in dotted.items():
        add("bad-key", f"key {real!r} contains a dot (WebDataset splits keys at the first dot); members {files}", real)
    if not members:
        return problems, None
    problem = key_problem(key)
    if problem:
        add("bad-key", problem)
        return problems, None
    found, unknown = split_members(members)
    for name in unknown:
        add("unknown-member", f"member {names.get(name, name)!r} is not input.<ext>, target.<ext> or json")
    for member in (*MEMBERS, "json"):
        if not found[member]:
            add("missing-member", f"missing member {member}" + ("" if member == "json" else ".<ext>"))
        elif len(found[member]) > 1:
            add("duplicate-member", f"more than one {member} member: {sorted(found[member])}")
    task = None
    meta = None
    if found["json"]:
        try:
            meta = parse_meta(members, url, key)
            task = meta["task"]
            if tasks is not None and task not in tasks:
                add("unknown-task", f"task {task!r} is not one of the known tasks {sorted(tasks)}")
        except SampleError as err:
            add(err.kind, err.reason)
    if not decode:
        return problems, task
    decoded = {}
    for member in MEMBERS:
        if len(found[member]) == 1:
            try:
                decoded[member] = decode_member(members, found[member][0], url, key)
            except SampleError as err:
                add(err.kind, err.reason)
    if len(decoded) == 2:
        inp, tgt = decoded["input"], decoded["target"]
        for kind, msg in shape_problems(inp, tgt, check_shape=check_shape):
            add(kind, msg)
        if meta is not None:
            got = {"frames": inp.shape[1], "height": inp.shape[2], "width": inp.shape[3]}
            wrong = [f"{k} {meta[k]} != {v}" for k, v in got.items() if k in meta and meta[k] != v]
            if wrong:
                add("meta-mismatch", f"json disagrees with the input pixels: {', '.join(wrong)}")
    return problems, task


def _index_for(url: str, cache: dict) -> dict | None:
    folder = os.path.dirname(os.path.abspath(url)) if "://" not in url else None
    if folder is None:
        return None
    if folder not in cache:
        path = Path(folder) / INDEX_NAME
        try:
            cache[folder] = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            cache[folder] = None
    return cache[folder]


def validate_shards(urls: str | Sequence[str], *, tasks: Sequence[str] | None = None, check_shape: bool = True,
                    decode: bool = True, use_index: bool = True) -> ValidationReport:
    """Read every sample of every shard and collect all problems.

    Args:
        urls: shard paths/urls, brace patterns, globs, folders or index.json files (:func:`expand_shard_urls`).
        tasks: the known task names; ``None`` takes them from the ``index.json`` next to each shard
            (no task check when there is none).
        check_shape: report T != 1 + 4k and sizes that are not multiples of 16.
        decode: decode inputs/targets (``False`` checks only the tar structure, keys and json).
        use_index: compare sample counts with ``index.json`` and take known tasks from it.

    Returns:
        a :class:`ValidationReport` (``report.ok``, ``report.problems``, ``report.format()``).
    """
    expanded = expand_shard_urls(urls)
    report = ValidationReport(urls=expanded)
    if not expanded:
        report.problems.append(Problem(str(urls), None, "missing-shard", "no shard matches"))
        return report
    known = set(tasks) if tasks is not None else None
    index_cache: dict = {}
    for url in expanded:
        index = _index_for(url, index_cache) if use_index else None
        shard_tasks = known if known is not None else (set(index["tasks"]) if index and "tasks" in index else None)
        n = 0
        seen: set[str] = set()
        for sample, problem in iter_raw_samples(url):
            if problem is not None:
                report.problems.append(problem)
                continue
            n += 1
            if sample["__key__"] in seen:
                report.problems.append(Problem(url, sample["__key__"], "duplicate-key",
                                               "key appears more than once in the shard"))
            seen.add(sample["__key__"])
            problems, task = check_sample(sample, tasks=shard_tasks, check_shape=check_shape, decode=decode)
            report.problems += problems
            if task is not None:
                report.tasks[task] += 1
        report.samples += n
        report.samples_per_shard[url] = n
        opened = not any(p.url == url and p.kind in ("missing-shard", "corrupt-tar", "empty-shard")
                         for p in report.problems)
        if n == 0 and opened:
            report.problems.append(Problem(url, None, "empty-shard", "the shard holds no samples"))
        if index is not None:
            listed = {rec.get("url"): rec.get("samples") for rec in index.get("shards", [])}
            name = os.path.basename(url)
            if name in listed and listed[name] != n:
                report.problems.append(Problem(url, None, "index-mismatch",
                                               f"index.json lists {listed[name]} samples, the shard holds {n}"))
    return report
