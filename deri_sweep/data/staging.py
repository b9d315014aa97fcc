"""Node-local staging: copy a prepared cache from shared storage to this node's disk, verified, once.

A 4-GPU trial reads ~18 GB/s of random samples at cluster scale (``benchmarks/bench_data.py``);
a cache on EFS/Filestore or in a bucket does not sustain that, the instance NVMe does. A node
whose cluster config sets ``DERI_LOCAL_DISK`` (the NVMe mount) gets one copy of each cache
its trials read, under ``$DERI_LOCAL_DISK/deri-stage/<name>-<digest of the source>/``:

- one process copies at a time (a ``flock`` beside the copy); the others wait, then reuse it;
- every shard is checked against the sha256 that ``prepare`` wrote into ``cache.json``; other
  files (index, reports, text features) are hashed while they are copied;
- ``stage.json`` records each copied file's size, mtime and sha256 (``complete`` once the
  last file is in), so a later call re-reads only files whose size or mtime changed: a copy
  that was modified or truncated is detected and that file copied again; a source file that
  changed is copied again;
- a copy that is killed leaves a ``.part`` file and an incomplete ``stage.json``: the next
  call goes on from there.

The source is a local path (a shared mount) or a ``s3://`` / ``gs://`` URI (read with
``pyarrow.fs``). Files and folders whose names start with ``.`` (locks, unfinished builds)
are not copied. Plain Python: the per-node tasks that call this live in orchestration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from deri_sweep.common.storage import atomic_write_text, file_lock

log = logging.getLogger(__name__)

#: the environment variable a cluster config sets on nodes with a local disk for caches
LOCAL_DISK_ENV = "DERI_LOCAL_DISK"
MANIFEST = "stage.json"
_CHUNK = 8 << 20


class StageError(RuntimeError):
    """A cache that cannot be staged (unfinished, unreadable, or corrupt at its source)."""


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What :func:`stage_cache` did.

    Attributes:
        path: the node-local copy.
        copied: files copied in this call (0: the copy was reused as it was).
        reused: files already in place and verified.
        bytes_copied: bytes copied in this call.
        seconds: wall time of the call.
    """

    path: Path
    copied: int
    reused: int
    bytes_copied: int
    seconds: float


def local_disk() -> Path | None:
    """This node's disk for staged caches (``$DERI_LOCAL_DISK``), or ``None`` where staging is off."""
    value = os.environ.get(LOCAL_DISK_ENV, "").strip()
    return Path(value) if value else None


def stage_path(source: str, disk: str | Path) -> Path:
    """Where ``source`` is staged on ``disk``: ``<disk>/deri-stage/<last name>-<sha1 of source>``."""
    source = source.rstrip("/")
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    return Path(disk) / "deri-stage" / f"{source.rsplit('/', 1)[-1]}-{digest}"


def _filesystem(source: str) -> tuple[Any, str]:
    from pyarrow import fs

    if "://" not in source:
        return fs.LocalFileSystem(), str(Path(source).resolve())
    return fs.FileSystem.from_uri(source)


def _listing(filesystem: Any, base: str) -> dict[str, tuple[int, int]]:
    """``relative path -> (bytes, mtime_ns)`` of every file to stage under ``base``."""
    from pyarrow import fs

    files = {}
    for info in filesystem.get_file_info(fs.FileSelector(base, recursive=True)):
        relative = info.path[len(base.rstrip("/")) + 1 :]
        if info.type != fs.FileType.File or any(part.startswith(".") for part in relative.split("/")):
            continue
        files[relative] = (int(info.size), int(info.mtime_ns or 0))
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(filesystem: Any, source: str, target: Path) -> str:
    """Stream ``source`` into ``target`` (through a ``.part`` file); returns the sha256 of what was read."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    with filesystem.open_input_stream(source) as src, part.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    part.replace(target)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def stage_cache(source: str, disk: str | Path | None = None) -> StageResult:
    """Copy the prepared cache ``source`` to ``disk`` (default ``$DERI_LOCAL_DISK``), or reuse a verified copy.

    Args:
        source: the cache folder on shared storage: a path or a ``s3://``/``gs://`` URI.
        disk: the node-local disk.

    Returns:
        The local copy and what was copied.

    Raises:
        StageError: ``source`` is not a finished cache, or a shard read from it does not
            match its checksum in ``cache.json`` (the source itself is corrupt).
        ValueError: no disk given and ``$DERI_LOCAL_DISK`` is not set.
    """
    started = time.perf_counter()
    disk = Path(disk) if disk is not None else local_disk()
    if disk is None:
        raise ValueError(f"no local disk: set {LOCAL_DISK_ENV} on the node (the cluster config does) or pass one")
    filesystem, base = _filesystem(source)
    try:
        with filesystem.open_input_stream(f"{base}/cache.json") as fh:
            info = json.loads(fh.read())
    except (OSError, ValueError) as exc:
        raise StageError(f"{source}: no readable cache.json ({exc}); run `python -m deri_sweep.data.prepare`") from None
    if not info.get("complete") or "shards" not in info:
        raise StageError(f"{source}: the cache is not finished (cache.json complete/shards); run prepare to the end")
    target = stage_path(source, disk)
    with file_lock(target.with_name(f".{target.name}.lock"), wait=True):
        return _stage_locked(filesystem, base, source, info, target, started)


def _stage_locked(
    filesystem: Any, base: str, source: str, info: dict[str, Any], target: Path, started: float
) -> StageResult:
    """The copy of :func:`stage_cache`; the caller holds the copy's lock."""
    expected = {f"shards/{name}": entry["sha256"] for name, entry in info["shards"].items()}
    listing = _listing(filesystem, base)
    missing = sorted(set(expected) - set(listing))
    if missing:
        raise StageError(f"{source}: cache.json lists shards that are absent, e.g. {missing[0]}")
    old = _read_json(target / MANIFEST)
    old_files = old.get("files", {}) if old.get("source") == source else {}
    files: dict[str, dict[str, Any]] = {}
    copied = bytes_copied = 0
    saved = time.monotonic()

    def save(complete: bool) -> None:
        atomic_write_text(target / MANIFEST, json.dumps({"source": source, "complete": complete, "files": files}))

    for relative, (size, source_mtime) in sorted(listing.items()):
        local = target / relative
        entry = old_files.get(relative, {})
        sha = _reusable(local, entry, size, source_mtime, expected.get(relative))
        if sha is None:
            if copied == 0:  # from the first copy on the folder is not a verified copy until the end
                target.mkdir(parents=True, exist_ok=True)
                save(False)
            if local.exists():
                log.warning("%s: staged copy differs from its source; copying it again", local)
            sha = _copy(filesystem, f"{base}/{relative}", local)
            if relative in expected and sha != expected[relative]:
                local.unlink()
                raise StageError(f"{source}/{relative}: sha256 differs from cache.json; the source cache is corrupt")
            copied += 1
            bytes_copied += size
        stat = local.stat()
        files[relative] = {"bytes": size, "mtime_ns": stat.st_mtime_ns, "source_mtime_ns": source_mtime, "sha256": sha}
        if copied and time.monotonic() - saved > 5:  # a killed copy resumes from here, not from the start
            save(False)
            saved = time.monotonic()
    for stale in [p for p in target.rglob("*") if p.is_file() and p.relative_to(target).as_posix() not in files]:
        if stale.name != MANIFEST:
            stale.unlink()
    if copied or not old.get("complete"):
        save(True)
    result = StageResult(target, copied, len(files) - copied, bytes_copied, time.perf_counter() - started)
    if copied:
        log.info("staged %s -> %s (%d files, %.2f GB, %.1f s)", source, target, copied, bytes_copied / 1e9,
                 result.seconds)  # fmt: skip
    else:
        log.info("staged copy reused: %s (%d files verified)", target, len(files))
    return result


def _reusable(local: Path, entry: dict[str, Any], size: int, source_mtime: int, shard_sha: str | None) -> str | None:
    """The sha256 of ``local`` when it is a good copy of its source file, else ``None`` (copy it again)."""
    try:
        stat = local.stat()
    except FileNotFoundError:
        return None
    if stat.st_size != size:
        return None
    if shard_sha is None and entry.get("source_mtime_ns") != source_mtime:
        return None  # an index/report/feature file changed at the source
    unchanged = entry.get("mtime_ns") == stat.st_mtime_ns and entry.get("bytes") == size
    if unchanged and (shard_sha is None or entry.get("sha256") == shard_sha):
        return entry["sha256"]
    if shard_sha is not None:  # size right, stamp unknown or changed: re-read it against cache.json
        return shard_sha if _sha256(local) == shard_sha else None
    return None
