"""Dataset readers: each turns one released dataset folder into canonical records.

Use :func:`open_reader` with a format name from :data:`READERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deri_sweep.data.readers.base import DatasetError, Reader
from deri_sweep.data.readers.cpsc2018 import Cpsc2018Reader
from deri_sweep.data.readers.csn import CsnReader
from deri_sweep.data.readers.mimic import MimicReader, clean_report
from deri_sweep.data.readers.ptbxl import PtbxlReader
from deri_sweep.data.readers.wfdb_dir import WfdbDirReader
from deri_sweep.data.signal import SignalOptions

#: Format name -> reader class.
READERS: dict[str, type[Reader]] = {
    cls.format: cls for cls in (MimicReader, PtbxlReader, Cpsc2018Reader, CsnReader, WfdbDirReader)
}


def open_reader(fmt: str, root: str | Path, options: SignalOptions = SignalOptions(), **kwargs: Any) -> Reader:  # noqa: B008
    """Open a dataset folder with the reader of ``fmt``.

    Args:
        fmt: one of :data:`READERS` (``mimic``, ``ptbxl``, ``cpsc2018``, ``csn``, ``wfdb-dir``).
        root: the dataset folder.
        options: signal conditioning options.
        **kwargs: reader-specific keyword options (e.g. ``prefer="lr"`` for ptbxl).

    Returns:
        The reader.

    Raises:
        ValueError: for an unknown format (the message lists the known ones).
        DatasetError: when ``root`` is missing or not in that format.
    """
    if fmt not in READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; choose one of {', '.join(sorted(READERS))}")
    return READERS[fmt](root, options, **kwargs)


__all__ = [
    "READERS",
    "Cpsc2018Reader",
    "CsnReader",
    "DatasetError",
    "MimicReader",
    "PtbxlReader",
    "Reader",
    "WfdbDirReader",
    "clean_report",
    "open_reader",
]
