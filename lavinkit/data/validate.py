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

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lavinkit.data.schema import Problem, check_sample
from lavinkit.data.shards import INDEX_NAME, find_index, open_shard, resolve_urls, shard_samples


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


def read_shard(url: str) -> Iterator[tuple[dict | None, Problem | None]]:
    """The samples of one shard through the shared reader (:mod:`lavinkit.data.shards`) as ``(sample, None)``, and
    ``(None, Problem)`` for a shard that cannot be opened or read (the samples before the damage are yielded)."""
    try:
        stream = open_shard(url)
    except OSError as err:
        yield None, Problem(url, None, "missing-shard", f"cannot open shard: {getattr(err, 'strerror', None) or err}")
        return
    key = None
    try:
        with stream:
            for sample in shard_samples(url, stream):
                key = sample["__key__"]
                yield sample, None
    except Exception as err:  # noqa: BLE001 - any read failure is this shard's problem, reported with its name
        if getattr(err, "key", None) is not None:  # the reader's duplicate member name
            yield None, Problem(url, err.key, "duplicate-member", f"{err}; the rest of the shard is not read")
            return
        after = f" in or after key {key!r}" if key is not None else ""
        yield None, Problem(url, None, "corrupt-tar", f"unreadable tar{after} ({err}); truncated or not a tar file")


def validate_shards(urls: str | Sequence[str], *, tasks: Sequence[str] | None = None, check_shape: bool = True,
                    decode: bool = True, use_index: bool = True) -> ValidationReport:
    """Read every sample of every shard and collect all problems.

    Args:
        urls: shard paths/urls, brace patterns, globs, folders or index.json files (:func:`~lavinkit.data.shards.resolve_urls`).
        tasks: the known task names; ``None`` takes them from the ``index.json`` next to each shard
            (no task check when there is none).
        check_shape: report T != 1 + 4k and sizes that are not multiples of 16.
        decode: decode inputs/targets (``False`` checks only the tar structure, keys and json).
        use_index: compare sample counts with ``index.json`` and take known tasks from it.

    Returns:
        a :class:`ValidationReport` (``report.ok``, ``report.problems``, ``report.format()``).
    """
    try:
        expanded = resolve_urls(urls, what="validate", must_exist=False)
    except ValueError:
        expanded = []
    report = ValidationReport(urls=expanded)
    if not expanded:
        report.problems.append(Problem(str(urls), None, "missing-shard", "no shard matches"))
        return report
    known = set(tasks) if tasks is not None else None
    for url in expanded:
        index = find_index([os.path.abspath(url)]) if use_index and "://" not in url else None
        shard_tasks = known if known is not None else (set(index["tasks"]) if index and "tasks" in index else None)
        n, seen, before = 0, set(), len(report.problems)
        for sample, problem in read_shard(url):
            if problem is not None:
                report.problems.append(problem)
                continue
            n += 1
            if sample["__key__"] in seen:
                report.problems.append(Problem(url, sample["__key__"], "duplicate-key",
                                               "key appears more than once in the shard"))
            seen.add(sample["__key__"])
            problems, meta, _ = check_sample(sample, tasks=shard_tasks, check_shape=check_shape, decode=decode)
            report.problems += problems
            if meta is not None:
                report.tasks[meta["task"]] += 1
        report.samples += n
        report.samples_per_shard[url] = n
        if n == 0 and not any(p.key is None for p in report.problems[before:]):
            report.problems.append(Problem(url, None, "empty-shard", "the shard holds no samples"))
        if index is not None:
            listed = {rec.get("url"): rec.get("samples") for rec in index.get("shards", [])}
            name = os.path.basename(url)
            if name in listed and listed[name] != n:
                report.problems.append(Problem(url, None, "index-mismatch",
                                               f"{INDEX_NAME} lists {listed[name]} samples, the shard holds {n}"))
    return report
