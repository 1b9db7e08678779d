"""``lavinkit data validate``: read shards and report every problem, with its shard and key.

Understands every shard kind the kit writes: pixel pair shards (``lavinkit data pack`` / ``data demo``) and
latent shards (``lavinkit encode``; json ``"latents": true``, float16 ``.npy`` members).

Problem kinds (``Problem.kind``; ``key`` is ``None`` for problems of a whole shard):

=================  ==========================================================================
missing-shard      the url does not exist / cannot be opened, or ``index.json`` lists a shard that is not there
truncated          the tar ends early: without its end-of-archive marker (cut at a member boundary), inside a
                   header or inside member data (the samples before the cut are still checked; the key is the
                   sample being read at the cut)
corrupt-tar        not a tar (bad header checksum) or an unreadable compressed stream
empty-shard        a tar without samples
index-mismatch     the sample count (or byte size) differs from the shard's record in ``index.json``
bad-key            a key with a dot (WebDataset would split it) or characters outside [A-Za-z0-9_-]
duplicate-key      a key that comes back later in the shard repeating its members (a sample written twice)
non-adjacent       a key whose members are not adjacent (the key comes back later with other members)
missing-member     no ``input.<ext>``, ``target.<ext>`` or ``json``
duplicate-member   a member name twice in a row, or several inputs (``input.png`` and ``input.jpg``) or targets
empty-member       an input, target or json member of 0 bytes
no-extension       a member name without an extension
unknown-member     a member that is not part of the schema
bad-extension      an input/target extension that is not png/jpg/jpeg/webp/tif/tiff/mp4/npy (npy for latents)
bad-json           json that does not parse, or is not an object
missing-task       json without a non-empty string ``"task"``
unknown-task       a task not in ``--tasks`` (or in the ``index.json`` next to the shard)
undecodable        an input/target file that cannot be decoded
size-mismatch      input and target differ in frames, height or width (latents: in shape)
frames             T is not 1 + 4k
size-multiple      height or width not a multiple of 16
meta-mismatch      json frames/height/width disagree with the decoded pixels (latents: ``latent_shape`` or
                   the VAE's channel count)
non-finite         latents with NaN or Inf values
=================  ==========================================================================
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lavinkit.data.schema import Problem, check_sample
from lavinkit.data.shards import INDEX_NAME, TarFormatError, find_index, open_shard, resolve_urls, shard_samples


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


# problems that concern a whole shard rather than one of its samples
SHARD_KINDS = ("missing-shard", "truncated", "corrupt-tar")


def read_shard(url: str) -> Iterator[tuple[dict | None, Problem | None]]:
    """The samples of one shard through the shared reader (:mod:`lavinkit.data.shards`) as ``(sample, None)``, and
    ``(None, Problem)`` for a shard that cannot be opened or read to its end (the samples before the damage are
    yielded first). Malformed members travel with their sample (``"__problems__"``) to :func:`check_sample`."""
    try:
        stream = open_shard(url)
    except OSError as err:
        yield None, Problem(url, None, "missing-shard", f"cannot open shard: {getattr(err, 'strerror', None) or err}")
        return
    try:
        with stream:
            for sample in shard_samples(url, stream):
                yield sample, None
    except TarFormatError as err:
        yield None, Problem(url, err.key, err.kind, err.reason)
    except Exception as err:  # noqa: BLE001 - any read failure is this shard's problem, reported with its name
        yield None, Problem(url, None, "corrupt-tar", f"unreadable shard ({type(err).__name__}: {err}); "
                            "not a tar file, or damaged")


def _index_problem(url: str, rec: dict, samples: int) -> Problem | None:
    """Compare a shard with its ``index.json`` record (``"samples"``, and ``"bytes"`` for local files)."""
    recorded, found = [], []
    if isinstance(rec.get("samples"), int) and rec["samples"] != samples:
        recorded.append(f"{rec['samples']} samples")
        found.append(f"{samples} samples")
    if isinstance(rec.get("bytes"), int) and os.path.isfile(url) and rec["bytes"] != os.path.getsize(url):
        recorded.append(f"{rec['bytes']} bytes")
        found.append(f"{os.path.getsize(url)} bytes")
    if not recorded:
        return None
    return Problem(url, None, "index-mismatch", f"{INDEX_NAME} records {' and '.join(recorded)}, the shard has "
                   f"{' and '.join(found)} (an interrupted writer, or a shard replaced after indexing)")


def validate_shards(urls: str | Sequence[str], *, tasks: Sequence[str] | None = None, check_shape: bool = True,
                    decode: bool = True, use_index: bool = True) -> ValidationReport:
    """Read every sample of every shard and collect all problems.

    Args:
        urls: shard paths/urls, brace patterns, globs, folders or index.json files (:func:`~lavinkit.data.shards.resolve_urls`).
        tasks: the known task names; ``None`` takes them from the ``index.json`` next to each shard
            (no task check when there is none).
        check_shape: report T != 1 + 4k and sizes that are not multiples of 16 (pixel pairs).
        decode: decode inputs/targets (``False`` checks only the tar structure, keys and json).
        use_index: compare sample counts and sizes with ``index.json``, report the shards it lists that are
            missing, and take known tasks from it.

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
    indexes: dict[str, dict | None] = {}  # folder -> its index.json (read once)
    for url in expanded:
        index = None
        if use_index and "://" not in url and not url.startswith("pipe:"):
            folder = os.path.dirname(os.path.abspath(url))
            if folder not in indexes:
                found = find_index([os.path.abspath(url)])
                indexes[folder] = found if isinstance(found, dict) else None
            index = indexes[folder]
        shard_tasks = known if known is not None else (set(index["tasks"]) if index and "tasks" in index else None)
        keys, before = set(), len(report.problems)
        for sample, problem in read_shard(url):
            if problem is not None:
                report.problems.append(problem)
                continue
            problems, meta, _ = check_sample(sample, tasks=shard_tasks, check_shape=check_shape, decode=decode)
            report.problems += problems
            if any(p.kind == "no-extension" for p in problems) or sample["__key__"] in keys:
                continue  # a stray file, or the second part of a key split in two: not another sample
            keys.add(sample["__key__"])
            if meta is not None:
                report.tasks[meta["task"]] += 1
        n = len(keys)
        report.samples += n
        report.samples_per_shard[url] = n
        if n == 0 and not any(p.kind in SHARD_KINDS for p in report.problems[before:]):
            report.problems.append(Problem(url, None, "empty-shard", "the shard holds no samples"))
        if index is not None:
            records = {rec.get("url"): rec for rec in index.get("shards", []) if isinstance(rec, dict)}
            rec = records.get(os.path.basename(url))
            problem = _index_problem(url, rec, n) if rec is not None else None
            if problem is not None:
                report.problems.append(problem)
    # shards an index lists that are not on disk (an index next to a partial set of shards)
    seen = {os.path.abspath(u) for u in expanded if "://" not in u}
    for folder, index in indexes.items():
        for rec in (index or {}).get("shards", []):
            path = os.path.join(folder, str(rec.get("url"))) if isinstance(rec, dict) else None
            if path is not None and path not in seen and not os.path.exists(path):
                listed_in = os.path.join(folder, INDEX_NAME)
                report.problems.append(Problem(path, None, "missing-shard", f"listed in {listed_in} but not found"))
    return report
