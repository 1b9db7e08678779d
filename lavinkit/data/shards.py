"""Shard reading: url resolution, ``index.json`` task counts, and a lean tar reader that groups members
into raw samples, counting unreadable shards instead of failing.

:mod:`lavinkit.data.pipeline` builds the in-context stream on top of these.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_URL_SCHEMES = ("pipe:", "http://", "https://", "s3://", "gs://", "file:")


# --------------------------------------------------------------------------------------------- urls


def resolve_urls(urls: str | Sequence[str], *, what: str = "urls") -> list[str]:
    """Expand ``urls`` into a list of shard urls and check that local shards exist.

    Accepted forms: a WebDataset url string with brace expansion (``data/train-{000000..000009}.tar``,
    several joined by ``::``), ``pipe:`` commands and remote urls (kept as is), a directory (all ``*.tar``
    in it, sorted), a glob pattern (``data/*.tar``, sorted), or a list of any of these.

    Raises:
        FileNotFoundError: naming ``what`` and the first local shard that does not exist.
        ValueError: when nothing is left after expansion.
    """
    import braceexpand

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if item.startswith(_URL_SCHEMES):
            out.extend(braceexpand.braceexpand(item) if not item.startswith("pipe:") else [item])
            continue
        for part in item.split("::"):
            if os.path.isdir(part):
                found = sorted(glob.glob(os.path.join(part, "*.tar")))
                if not found:
                    raise FileNotFoundError(f"{what}: directory {part!r} contains no *.tar shards")
                out.extend(found)
            elif any(c in part for c in "*?[") and "{" not in part:
                found = sorted(glob.glob(part))
                if not found:
                    raise FileNotFoundError(f"{what}: glob {part!r} matches no file")
                out.extend(found)
            else:
                out.extend(braceexpand.braceexpand(part))
    if not out:
        raise ValueError(f"{what}: no shard urls in {urls!r}")
    for url in out:
        if url.startswith(_URL_SCHEMES):
            continue
        if not os.path.isfile(url):
            raise FileNotFoundError(f"{what}: shard {url!r} does not exist")
    return out


def find_index(urls: Sequence[str]) -> dict | None:
    """The ``index.json`` next to the (local) shards, if there is exactly one such folder and file."""
    import json

    folders = {os.path.dirname(u) for u in urls if not u.startswith(_URL_SCHEMES)}
    if len(folders) != 1:
        return None
    path = Path(folders.pop() or ".") / "index.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        warnings.warn(f"{path}: not valid JSON; shard index ignored", stacklevel=2)
        return None


def task_counts_from_index(index: dict | None, urls: Sequence[str] = ()) -> dict[str, int]:
    """``{task: number of pairs}`` in ``urls`` according to an ``index.json``.

    Uses the per-shard records (``{"shards": [{"url", "tasks": {task: n}}]}``, matched by file name) when
    they cover ``urls``, else the totals in ``{"tasks": {task: int | {"count": int}}}``.
    """
    if not index:
        return {}
    names = {os.path.basename(u) for u in urls}
    shards = index.get("shards")
    if names and isinstance(shards, list):
        counts: dict[str, int] = {}
        matched = set()
        for rec in shards:
            if not isinstance(rec, dict) or os.path.basename(str(rec.get("url", ""))) not in names:
                continue
            matched.add(os.path.basename(str(rec["url"])))
            for task, n in (rec.get("tasks") or {}).items():
                if isinstance(n, int):
                    counts[task] = counts.get(task, 0) + n
        # an index that does not describe all of these shards gives no verdict
        return counts if matched == names else {}
    tasks = index.get("tasks")
    counts = {}
    if isinstance(tasks, dict):
        for name, value in tasks.items():
            if isinstance(value, int):
                counts[name] = value
            elif isinstance(value, dict):
                for field_name in ("count", "pairs", "num_pairs", "samples"):
                    if isinstance(value.get(field_name), int):
                        counts[name] = value[field_name]
                        break
    return counts


# --------------------------------------------------------------------------------------------- skips


@dataclass
class SkipLog:
    """Bad samples skipped in one worker: total, per shard, and the last one (url, key, reason)."""

    count: int = 0
    by_shard: dict[str, int] = field(default_factory=dict)
    last: tuple[str, str, str] | None = None
    _reported: int = 0

    def add(self, url: str | None, key: str | None, reason: str) -> None:
        url = url or "<unknown shard>"
        self.count += 1
        self.by_shard[url] = self.by_shard.get(url, 0) + 1
        self.last = (url, key or "<unknown key>", reason)

    def delta(self) -> dict | None:
        """What happened since the last call, for shipping with a batch (``None`` when nothing)."""
        if self.count == self._reported:
            return None
        out = {"count": self.count - self._reported, "by_shard": dict(self.by_shard), "last": self.last}
        self._reported = self.count
        self.by_shard = {}
        return out


# --------------------------------------------------------------------------------------------- raw stage


class TarFormatError(ValueError):
    """A tar stream that cannot be parsed (bad header checksum, truncated member)."""


def _octal(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def tar_members(stream, url: str) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of the regular files in an uncompressed tar stream (ustar, pax, GNU long names).

    A lean replacement for ``tarfile``'s streaming mode (3-10x faster on small members); headers are
    checksum-verified and a truncated member raises :class:`TarFormatError` naming ``url``.
    """
    read = stream.read
    pax: dict[str, str] = {}
    longname: str | None = None
    while True:
        header = read(512)
        if not header:
            return
        if len(header) < 512:
            raise TarFormatError(f"truncated tar header in {url}")
        if header == b"\0" * 512:
            return
        chksum = _octal(header[148:156])
        if chksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarFormatError(f"bad tar header checksum in {url} (corrupt or not a tar file)")
        size = _octal(header[124:136])
        kind = header[156:157]
        padded = (size + 511) & ~511
        data = read(padded) if padded else b""
        if len(data) < padded:
            raise TarFormatError(f"truncated tar member in {url}")
        data = data[:size]
        if kind == b"x":
            pax = _pax_records(data)
            continue
        if kind == b"L":
            longname = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind not in (b"0", b"\0", b"7"):
            pax, longname = {}, None  # directories, links, global headers: nothing to read
            continue
        name = pax.get("path") or longname
        if name is None:
            name = header[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
            if header[257:262] == b"ustar" and header[345:346] != b"\0":
                name = header[345:500].rstrip(b"\0").decode("utf-8", "surrogateescape") + "/" + name
        pax, longname = {}, None
        yield name, data


def _split_name(name: str) -> tuple[str | None, str | None]:
    """``dir/key.ext.more`` -> (``dir/key``, ``ext.more``) like webdataset's ``base_plus_ext``."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot <= slash:
        return None, None
    return name[:dot], name[dot + 1 :]


def shard_samples(url: str, stream) -> Iterator[dict]:
    """Group one shard's members into raw samples ``{"__key__", "__url__", suffix: bytes}``.

    Members are grouped by consecutive key like ``webdataset.tarfile_to_samples``; a duplicate member
    name raises ``ValueError`` naming url and key.
    """
    current: dict | None = None
    for name, data in tar_members(stream, url):
        base = name.rsplit("/", 1)[-1]
        if base.startswith("__") and base.endswith("__"):
            continue
        key, suffix = _split_name(name)
        if key is None:
            continue
        suffix = suffix.lower()
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key, "__url__": url}
        if suffix in current:
            err = ValueError(f"duplicate member {name!r}")
            err.url, err.key = url, key  # type: ignore[attr-defined]
            raise err
        current[suffix] = data
    if current is not None:
        yield current


def raw_samples(url_source: Iterable[dict], log: SkipLog) -> Iterator[dict]:
    """Shard dicts ``{"url": ...}`` -> raw samples ``{"__key__", "__url__", member: bytes}``.

    Urls are opened with ``webdataset.gopen`` (local files, ``pipe:``, http, ...). A shard that cannot be
    opened or parsed (corrupt/truncated tar, duplicate member) is counted in ``log`` and the stream goes
    on with the next shard; the samples read before the damage are kept.
    """
    from webdataset.gopen import gopen

    for shard in url_source:
        url = shard["url"]
        try:
            stream = gopen(url, "rb")
        except Exception as exn:  # noqa: BLE001 - any failure to open is one bad shard
            log.add(url, None, f"cannot open shard: {type(exn).__name__}: {exn}")
            continue
        try:
            yield from shard_samples(url, stream)
        except Exception as exn:  # noqa: BLE001 - one damaged shard must not end the stream
            log.add(url, getattr(exn, "key", None), f"{type(exn).__name__}: {exn}")
        finally:
            stream.close()
