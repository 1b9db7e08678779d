"""Atomic file writes: a reader sees the previous file or the complete new one, never a partial one.

Every file that a later run reads (checkpoints, weights files, shards, ``index.json``) is written through these
helpers. The bytes go to a hidden temporary in the destination folder, ``.<name>.<pid>-<token>.tmp``; on success
the temporary is flushed and fsync'ed, renamed over the destination with :func:`os.replace` and the folder is
fsync'ed (so the rename itself survives a crash or power loss). The temporary lives next to the destination, not
in ``TMPDIR``, because a rename is atomic only within one filesystem: a move across filesystems copies into the
destination after truncating it.

On any exception (``KeyboardInterrupt`` included) the temporary is removed and the destination is untouched; errors
are re-raised as :class:`AtomicWriteError` naming the destination (``KeyboardInterrupt`` as it is). A
process killed outright (SIGKILL, OOM killer) cannot clean up: its temporaries are removed by the next write to
the same destination (only temporaries of that destination name whose writing process is gone; other files are
never touched).

Example::

    with atomic_open("runs/x/weights.pt") as f:       # binary file object
        torch.save(state, f)
    with atomic_path("runs/x/w.safetensors") as tmp:  # a path, for libraries that open the file themselves
        safetensors.torch.save_file(tensors, str(tmp))
    atomic_write_text("shards/index.json", text)
"""

from __future__ import annotations

import fnmatch
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


class AtomicWriteError(OSError):
    """Writing a file failed (full disk, I/O error, a serialisation error); the message names the file and says
    that the previous file, if any, is unchanged. The original exception is the ``__cause__``."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh temporary name for ``path`` in the same folder: ``<folder>/.<name>.<pid>-<8 hex>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(folder: str | os.PathLike, target: str) -> list[Path]:
    """Remove the temporaries left in ``folder`` by killed writers of files named ``target`` (a name or an
    ``fnmatch`` pattern such as ``"images-*.tar"``); returns the removed paths.

    Only names of the form ``.<target>.<pid>-<token>.tmp`` whose process ``pid`` no longer runs are removed, so
    a concurrent writer's temporary and user files are left alone. The check sees this machine's processes: on a
    folder shared by several machines one machine writes a given file (Lightning saves from global rank 0).
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = _TMP_NAME.match(entry.name)
        if m is None or not fnmatch.fnmatchcase(m["target"], target) or _process_alive(int(m["pid"])):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:  # removed by another writer meanwhile
            pass
    return removed


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new name in it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and Windows) refuse fsync on a folder; the data itself is synced
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a closed file's data to disk (``fsync`` through a fresh descriptor flushes the whole file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make the closed, complete temporary ``tmp`` the file ``path``: fsync, ``os.replace``, fsync the folder."""
    path = Path(path)
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (not yet created) for a writer that opens files by name; when the
    block ends normally the file written there replaces ``path`` atomically, on any exception it is removed.

    The destination folder is created if missing, and orphaned temporaries of ``path`` are removed first.

    Raises:
        AtomicWriteError: any error raised in the block or while committing, naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.name)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer created no file (expected {tmp.name})")
        commit(tmp, path)
    except BaseException as err:
        _discard(tmp)
        if not isinstance(err, Exception) or isinstance(err, AtomicWriteError):
            raise  # KeyboardInterrupt, SystemExit: as they are
        kept = "the previous file is unchanged" if path.exists() else "no file was created"
        raise AtomicWriteError(getattr(err, "errno", None) or 0,
                               f"{path}: writing failed ({type(err).__name__}: {err}); {kept}") from err


def open_temporary(path: str | os.PathLike, mode: str = "wb") -> tuple[Path, IO]:
    """Create a fresh temporary for ``path`` (exclusive create, permissions from the umask like a normal file)
    and open it; returns ``(temporary path, file)``. The caller closes it and calls :func:`commit` or removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.name)
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        return tmp, os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary next to ``path`` for writing (``mode`` ``"wb"`` or ``"w"``; ``kwargs`` go to ``open``,
    e.g. ``encoding``); on normal exit it is closed and committed (fsync, rename: :func:`commit`); on an exception
    removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, "x" + mode[1:], **kwargs) as f:
            yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)
