"""Writing results safely: atomic writes, and storage problems reported as what to do about them.

A reader never sees a half-written file: every write goes through a temporary
file in the same folder and an atomic rename. A full disk, a read-only mount or
a permission problem becomes a :class:`StorageError` that names the path, the
cause and the fix, instead of a bare ``OSError`` from deep inside a sweep.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_FIXES = {
    errno.ENOSPC: "the disk is full: free space there or choose a folder on another disk",
    errno.EDQUOT: "the disk quota is used up: free space there or choose a folder on another disk",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
}


class LockHeld(RuntimeError):
    """Another process holds a :func:`file_lock`; ``holder`` is its ``host:pid``."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: held by {holder}")
        self.path, self.holder = path, holder


class StorageError(OSError):
    """A folder or file that cannot be written (full, read-only, no permission); the message says what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


def storage_error(path: str | Path, exc: OSError, what: str) -> OSError:
    """Turn an ``OSError`` of a storage kind into a :class:`StorageError` naming ``path`` and the fix.

    Other errors are returned unchanged (the caller re-raises them).
    """
    fix = _FIXES.get(exc.errno or -1)
    if fix is None:
        return exc
    return StorageError(exc.errno, f"{path}: cannot write the {what} ({os.strerror(exc.errno or 0)}); {fix}")


def _reraise(error: OSError, cause: OSError) -> None:
    if error is cause:
        raise cause
    raise error from cause


def check_writable(folder: str | Path, *, what: str, min_free_gb: float = 0.0, hint: str = "") -> Path:
    """Create ``folder`` if needed and prove it takes a file, with at least ``min_free_gb`` free.

    Args:
        folder: the folder a job is about to write into.
        what: what goes there, for the message (e.g. ``"run directory"``).
        min_free_gb: free space required, in GiB.
        hint: extra advice appended to a low-space message (e.g. the flag that lowers the check).

    Returns:
        The folder, resolved.

    Raises:
        StorageError: the folder cannot be created or written, or it has too little space.
    """
    folder = Path(folder).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        _reraise(storage_error(folder, exc, what), exc)
    free_gb = shutil.disk_usage(folder).free / 2**30
    if free_gb < min_free_gb:
        raise StorageError(
            errno.ENOSPC,
            f"{folder}: only {free_gb:.2f} GiB free for the {what}, below the {min_free_gb:g} GiB it needs; "
            f"free space there or choose a folder on another disk{hint}",
        )
    return folder


@contextmanager
def atomic_writer(path: str | Path, what: str = "file") -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only once the block ends without error.

    Args:
        path: the file to (re)write.
        what: what the file is, for a :class:`StorageError` message.

    Raises:
        StorageError: the folder is unwritable or the disk is full; ``path`` is
            then left as it was (absent or its previous content).
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a cache on a shared folder must be readable
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            _reraise(storage_error(path, exc, what), exc)
        raise


def _umask() -> int:
    """The process's umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_partial_writes(folder: str | Path) -> int:
    """Remove the temporary files that :func:`atomic_writer` leaves when its process is killed.

    Only call this while no other process writes into ``folder`` (e.g. under a lock).

    Returns:
        The number of files removed.
    """
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def file_lock(path: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``path`` (created if absent) for the block.

    The kernel drops the lock when its holder dies, so a killed process never
    leaves a stale lock. The file holds the holder's ``host:pid`` for messages.

    Args:
        path: the lock file.
        wait: block until the lock is free instead of raising.

    Raises:
        LockHeld: ``wait`` is false and another process holds the lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            if not wait:
                raise LockHeld(path, holder) from None
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()}:{os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def owned_temp_dir(prefix: str, root: str | Path | None = None) -> Path:
    """A new temporary folder ``<prefix><pid>-XXXXXXXX`` under ``root`` (default: the system temp dir).

    The owner's pid in the name lets :func:`remove_orphaned_temp_dirs` tell a folder whose
    process died (killed before it could clean up) from one still in use.
    """
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))


def remove_orphaned_temp_dirs(prefix: str, root: str | Path | None = None) -> int:
    """Delete the folders ``<prefix><pid>-*`` in ``root`` whose process ``<pid>`` is no longer alive.

    A node that lives for weeks of sweeps fills up otherwise, one killed process at a time.
    Folders of live processes, and any other name, are left alone.

    Args:
        prefix: the owner's prefix, as given to :func:`owned_temp_dir`.
        root: where the folders live (default: the system temp dir).

    Returns:
        How many folders were removed.
    """
    removed = 0
    for folder in Path(root or tempfile.gettempdir()).glob(f"{prefix}*-*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or another user's live process): not ours to delete
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed
