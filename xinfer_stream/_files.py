"""Atomic artifact writes and content hashes.

Every artifact we write (Q/DQ model, calibration set, cache, metadata, reports, engines) goes
through :func:`atomic_output`: the bytes land in a temporary file in the destination's folder
and are renamed over the destination only once complete and flushed, so a crash or a kill midway
leaves the previous artifact intact and never a partial one.

A process killed outright (SIGKILL, power loss) cannot remove its temporary file. The writer
holds an advisory lock (``flock``) on it while it writes, and the kernel drops that lock when the
process dies; the next write to the same destination removes the temporaries nobody holds. (Not
on Windows, which has no ``flock``: there, a killed writer's temporary stays.)
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["AtomicWriter", "append_text_file", "atomic_output", "atomic_text_file",
           "atomic_write_bytes", "atomic_write_json", "current_umask", "discard_atomic",
           "sha256_bytes", "sha256_file"]


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds.

    The caller writes the temporary path by any means (``onnx.save``, ``np.save``...), in place
    (not by renaming another file over it). On an exception the temporary file is removed and
    ``path`` is untouched; an ``OSError`` while committing (a full disk) names ``path``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=_SUFFIX, dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file 0600 (private while it is a temporary); the artifact gets the
        # mode any other new file of this user would get: 0666 less the umask.
        _chmod(fd, tmp, 0o666 & ~current_umask())
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until fd closes: "a live writer owns this"
        else:
            os.close(fd)  # Windows cannot rename over a file that is open
        try:
            yield tmp
            try:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(dest)) from exc
            _fsync_directory(dest.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    finally:
        if fcntl is not None:
            os.close(fd)


_SUFFIX = ".tmp"


class _Discarded(Exception):
    """Raised into an atomic output's exit to discard its temporary file."""


def discard_atomic(stack: ExitStack, error: BaseException | None = None) -> None:
    """Close ``stack``, which holds an :func:`atomic_output` a long-lived writer kept open, as if
    its block had failed with ``error``: the temporary file goes, the destination stays as it
    was (or absent)."""
    error = error if error is not None else _Discarded()
    stack.__exit__(type(error), error, None)


class AtomicWriter:
    """A long-lived writer whose file appears only when it is finished: :meth:`close` renames
    it over its destination, :meth:`abort` discards it. As a context manager, leaving the block
    closes it, or aborts it when the block raised."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextmanager
def atomic_text_file(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """A UTF-8 text file, open for writing, that becomes ``path`` only when the block succeeds
    (:func:`atomic_output`): for writers that stream lines over a long run."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        yield fh


def append_text_file(path: str | os.PathLike[str]) -> IO[str]:
    """A UTF-8 text file opened for appending; the caller owns it (``close()``).

    For a log that grows while a service runs (its JSON lines of results), which ``tail -f``
    and a restarted service keep reading and extending: that is not an artifact, is never
    replaced, so :func:`atomic_output` does not apply. Write whole lines and ``flush()`` after
    each group: a reader then sees only whole lines, except the last one after a crash.
    """
    return open(path, "a", encoding="utf-8")


def current_umask() -> int:
    """This process's umask, read without changing it where the OS says it (Linux 4.7+:
    ``/proc/self/status``); elsewhere set and restored at once (not thread-safe there)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod(fd: int, path: Path, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows: only the read-only bit exists
        os.chmod(path, mode)


def _remove_abandoned_temporaries(dest: Path) -> None:
    """Remove temporaries of ``dest`` left by writers that died: those nobody holds a lock on.

    A temporary is locked from just after it is made; the instant in between is the one window
    in which a concurrent writer of the same destination could remove a live one (that writer
    then fails; nothing is corrupted).
    """
    if fcntl is None:
        return
    for name in glob.glob(os.path.join(glob.escape(str(dest.parent)),
                                       f".{glob.escape(dest.name)}.*{_SUFFIX}")):
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # a live writer holds it
        else:
            Path(name).unlink(missing_ok=True)
        finally:
            os.close(fd)


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        _copy_into(fh, h, chunk)
    return h.hexdigest()


def _copy_into(fh: IO[bytes], h: Any, chunk: int) -> None:
    while block := fh.read(chunk):
        h.update(block)
