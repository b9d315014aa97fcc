"""The synthetic twin of the four datasets, in their real on-disk layouts (used when no data is given).

:mod:`~deri_sweep.data.synth.twin` writes the four roots and the manifest;
:mod:`~deri_sweep.data.synth.dipole` generates the 12-lead signals;
:mod:`~deri_sweep.data.synth.labels` derives labels, codes and reports from each record's
conditions; :mod:`~deri_sweep.data.synth.datasets` writes each dataset's files;
:mod:`~deri_sweep.data.synth.layouts` holds the shared file formats and the injected defects.
``python -m deri_sweep.data.synth --out DIR`` writes a twin.
"""

from __future__ import annotations

from deri_sweep.data.synth.twin import (
    DATASETS,
    DEFAULT_SIZES,
    EXPECTED_REASON,
    FOLDERS,
    MANIFEST_COLUMNS,
    main,
    write_all,
    write_cpsc2018,
    write_csn,
    write_mimic,
    write_ptbxl,
)

__all__ = [
    "DATASETS", "DEFAULT_SIZES", "EXPECTED_REASON", "FOLDERS", "MANIFEST_COLUMNS", "main", "write_all",
    "write_cpsc2018", "write_csn", "write_mimic", "write_ptbxl",
]  # fmt: skip
