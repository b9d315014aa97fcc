"""Run a function over chunks of records in worker processes, with a progress bar.

The reader is sent to each worker once (pool initializer), not once per chunk:
a MIMIC reader carries ~800k rows of metadata. Ctrl-C stops the run at once: queued
chunks are cancelled and only those already running finish.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm import tqdm

R = TypeVar("R")
_READER: Any = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (a SIGKILLed ``prepare`` leaves no orphans).

    An orphaned pool worker would wait for work forever, holding the build lock and the
    parent's output pipes. Elsewhere (no ``prctl``) this does nothing.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _init_worker(reader: Any, parent: int) -> None:
    global _READER
    _READER = reader
    # Ctrl-C goes to the whole process group: the parent stops the pool, a worker must not die mid-shard
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        _die_with_parent(parent)


def _call(fn: Callable[..., Any], keys: list[str], number: int) -> Any:
    return fn(_READER, keys, number)


def map_chunks(
    reader: Any,
    chunks: dict[int, list[str]],
    fn: Callable[[Any, list[str], int], R],
    *,
    workers: int = 1,
    progress: bool = True,
    total: int | None = None,
    initial: int = 0,
    desc: str = "records",
) -> Iterator[tuple[int, R]]:
    """Apply ``fn(reader, keys, number)`` to every chunk, yielding results as they finish.

    Args:
        reader: a picklable dataset reader.
        chunks: chunk number -> record keys.
        fn: a module-level (picklable) function.
        workers: processes; 1 runs in this process.
        progress: show a tqdm bar counting records.
        total: records in the whole job (for the bar), default: those in ``chunks``.
        initial: records already done before this call (resume).
        desc: bar label.

    Yields:
        ``(chunk number, fn's result)`` in completion order.
    """
    total = total if total is not None else sum(len(k) for k in chunks.values()) + initial
    with tqdm(total=total, initial=initial, unit="rec", desc=desc, disable=not progress, mininterval=1.0) as bar:
        if workers <= 1 or len(chunks) <= 1:
            for number, keys in chunks.items():
                result = fn(reader, keys, number)
                bar.update(len(keys))
                yield number, result
            return
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(reader, os.getpid()))
        try:
            futures = {pool.submit(_call, fn, keys, number): number for number, keys in chunks.items()}
            for future in as_completed(futures):
                number = futures[future]
                result = future.result()
                bar.update(len(chunks[number]))
                yield number, result
        except BaseException:
            # Ctrl-C, an error or an abandoned generator: queued chunks are dropped, running ones finish
            # (their shards are written atomically, so a resumed build keeps them)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
