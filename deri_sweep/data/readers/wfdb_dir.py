"""Any folder tree of WFDB records in the PhysioNet/CinC Challenge style.

Records are ``.hea`` files (with ``.mat``/``.dat`` signals) anywhere below the
root; a record's key is its header path relative to the root without the
extension (posix). The one label set ``dx`` holds every ``#Dx`` code seen in
the headers, sorted as strings; the headers are scanned once, on first use.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deri_sweep.data.readers.base import DatasetError, Reader, record_from_header, split_codes, unknown_key
from deri_sweep.data.record import Record
from deri_sweep.data.signal import SignalOptions
from deri_sweep.data.wfdb_io import parse_header

log = logging.getLogger(__name__)


class WfdbDirReader(Reader):
    """Reader of a generic WFDB folder tree with ``#Dx`` comments."""

    format = "wfdb-dir"

    def __init__(self, root: str | Path, options: SignalOptions = SignalOptions()) -> None:  # noqa: B008
        super().__init__(root, options)
        self._keys = sorted(p.relative_to(self.root).with_suffix("").as_posix() for p in self.root.rglob("*.hea"))
        if not self._keys:
            raise DatasetError(f"{self.root}: no .hea header anywhere below, so this is not a wfdb-dir root")
        self._key_set = frozenset(self._keys)
        self._dx: tuple[str, ...] | None = None
        log.info("wfdb-dir %s: %d records", self.root, len(self._keys))

    def _download_hint(self) -> str:
        return "pass a folder that holds WFDB .hea/.mat records (e.g. a PhysioNet/CinC Challenge training set)"

    def _scan_dx(self) -> tuple[str, ...]:
        codes: set[str] = set()
        skipped = 0
        for key in self._keys:
            try:
                codes.update(split_codes(parse_header(self.root / f"{key}.hea").comments.get("dx")))
            except Exception as exc:  # any unreadable header only leaves its codes out of the label set
                skipped += 1
                log.debug("dx scan skips %s: %s", key, exc)
        if skipped:
            log.warning("wfdb-dir %s: %d unreadable headers left out of the dx label set", self.root, skipped)
        return tuple(sorted(codes))

    @property
    def label_sets(self) -> dict[str, tuple[str, ...]]:
        """One set ``dx``: every ``#Dx`` code of the readable headers, sorted as strings."""
        if self._dx is None:
            self._dx = self._scan_dx()
        return {"dx": self._dx}

    def keys(self) -> list[str]:
        """Header paths relative to the root without ``.hea`` (posix), sorted."""
        return list(self._keys)

    def read(self, key: str) -> Record:
        """Read one record.

        Returns:
            The record (``record_id`` = key) with ``labels["dx"]`` = its codes,
            sorted, and meta ``age``, ``sex``.
        """
        if key not in self._key_set:
            raise unknown_key(self, key)
        header = parse_header(self.root / f"{key}.hea")
        labels = {"dx": tuple(sorted(split_codes(header.comments.get("dx"))))}
        return record_from_header(header, self.options, key, root=self.root, labels=labels)
