"""Synthetic data twin: MIMIC-IV-ECG, PTB-XL, CPSC2018 and CSN in their exact on-disk layouts.

``python -m deri_sweep.data.synth --out DIR`` writes ``DIR/mimic-iv-ecg``, ``DIR/ptb-xl``,
``DIR/cpsc2018`` and ``DIR/csn`` as PhysioNet releases them (spec: datasets.md), with
signals from :mod:`deri_sweep.data.synth.dipole` and labels, codes and reports derived from
each record's conditions (:mod:`deri_sweep.data.synth.labels`). ``DIR/synth_manifest.csv``
(dataset,record_id,conditions,defect) records the truth, including the defects injected
with ``--defect-rate`` (:mod:`deri_sweep.data.synth.layouts`). Every record draws from its
own generator seeded by (seed, dataset, index): the same seed writes byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from deri_sweep.data.synth.datasets import ManifestRow, write_cpsc2018, write_csn, write_mimic, write_ptbxl
from deri_sweep.data.synth.layouts import EXPECTED_REASON

__all__ = [
    "DATASETS", "DEFAULT_SIZES", "EXPECTED_REASON", "FOLDERS", "MANIFEST_COLUMNS", "main", "write_all",
    "write_cpsc2018", "write_csn", "write_mimic", "write_ptbxl",
]  # fmt: skip

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mimic", "ptbxl", "cpsc2018", "csn")
DEFAULT_SIZES: dict[str, int] = {"mimic": 1200, "ptbxl": 600, "cpsc2018": 300, "csn": 300}
#: Folder of each dataset under the output directory.
FOLDERS: dict[str, str] = {"mimic": "mimic-iv-ecg", "ptbxl": "ptb-xl", "cpsc2018": "cpsc2018", "csn": "csn"}
MANIFEST_COLUMNS: tuple[str, ...] = ("dataset", "record_id", "conditions", "defect")
MANIFEST = "synth_manifest.csv"
_WRITERS: dict[str, Callable[..., list[ManifestRow]]] = {
    "mimic": write_mimic, "ptbxl": write_ptbxl, "cpsc2018": write_cpsc2018, "csn": write_csn,
}  # fmt: skip
_README = """SYNTHETIC DATA - NOT REAL PATIENT RECORDS.

Written by `python -m deri_sweep.data.synth` (seed {seed}, defect rate {rate}).
Every waveform comes from a procedural cardiac-dipole model (deri_sweep/data/synth/dipole.py);
ids, dates, ages and reports are invented. The folders copy the on-disk layouts of
MIMIC-IV-ECG v1.0, PTB-XL v1.0.3, CPSC2018 (CinC 2020/2021 WFDB release) and
Chapman-Shaoxing-Ningbo ecg-arrhythmia v1.0.0 so that the project's readers can be tested
without the real data. synth_manifest.csv lists every record with its conditions and the
defect injected into it, if any.

Records: {counts}
"""


def _clear(out: Path, datasets: Iterable[str]) -> None:
    """Remove previous synthetic output of ``datasets``; refuse to touch a folder that is not ours."""
    ours = (out / MANIFEST).exists()
    for ds in datasets:
        folder = out / FOLDERS[ds]
        if folder.exists() and any(folder.iterdir()):
            if not ours:
                raise FileExistsError(f"{folder} exists and {out / MANIFEST} does not: not overwriting foreign data")
            shutil.rmtree(folder)


def write_all(
    out: str | Path,
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    defect_rate: float = 0.0,
    datasets: Sequence[str] = DATASETS,
    cpsc_dx: str = "snomed",
    progress: bool = False,
) -> dict[str, dict[str, object]]:
    """Write the synthetic datasets, the manifest and a README under ``out``.

    Args:
        out: output directory (created; earlier synthetic output of the same datasets is replaced).
        seed: master seed; the same seed writes byte-identical files.
        sizes: records per dataset, keys of :data:`DATASETS` (missing keys: :data:`DEFAULT_SIZES`).
        defect_rate: fraction of each dataset's records that get one injected defect.
        datasets: which datasets to write.
        cpsc_dx: CPSC2018 ``#Dx`` style, ``"snomed"`` codes or ``"abbrev"`` (early 2020 release).
        progress: show tqdm progress bars.

    Returns:
        dataset -> ``{"path", "records", "defects", "seconds"}``.

    Raises:
        ValueError: unknown dataset, negative size, bad rate or dx style.
        FileExistsError: a dataset folder holds data that this generator did not write.
    """
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    unknown = set(datasets) - set(DATASETS)
    if unknown or any(sizes[ds] < 0 for ds in datasets):
        raise ValueError(f"bad datasets/sizes: unknown {sorted(unknown)}, sizes {sizes}; known {DATASETS}")
    if not 0.0 <= defect_rate <= 1.0 or cpsc_dx not in ("snomed", "abbrev"):
        raise ValueError(f"defect_rate must lie in [0, 1] (got {defect_rate}); cpsc_dx snomed|abbrev (got {cpsc_dx})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, datasets)
    manifest: list[ManifestRow] = []
    summary: dict[str, dict[str, object]] = {}
    for ds in datasets:
        start = time.perf_counter()
        extra = {"dx": cpsc_dx} if ds == "cpsc2018" else {}
        root = out / FOLDERS[ds]
        root.mkdir(parents=True, exist_ok=True)
        rows = _WRITERS[ds](root, sizes[ds], seed=seed, defect_rate=defect_rate, progress=progress, **extra)
        manifest += rows
        n_bad = sum(bool(r.defect) for r in rows)
        seconds = time.perf_counter() - start
        summary[ds] = {"path": str(root), "records": len(rows), "defects": n_bad, "seconds": seconds}
        logger.info("%s: %d records (%d with a defect) in %s", ds, len(rows), n_bad, root)
    with (out / MANIFEST).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows((r.dataset, r.record_id, r.conditions, r.defect) for r in manifest)
    counts = ", ".join(f"{ds} {summary[ds]['records']}" for ds in datasets)
    (out / "README.txt").write_text(_README.format(seed=seed, rate=defect_rate, counts=counts))
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deri_sweep.data.synth",
        description="Write SYNTHETIC 12-lead ECG datasets in the exact on-disk layouts of MIMIC-IV-ECG, PTB-XL, "
        "CPSC2018 (CinC WFDB) and Chapman-Shaoxing-Ningbo, plus synth_manifest.csv with the truth.",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory (dataset folders are created inside)")
    p.add_argument("--datasets", default=",".join(DATASETS),
                   help=f"comma-separated subset of {','.join(DATASETS)} (default: all)")  # fmt: skip
    for ds in DATASETS:
        p.add_argument(f"--n-{ds}", type=int, default=DEFAULT_SIZES[ds], metavar="N",
                       help=f"number of {ds} records (default {DEFAULT_SIZES[ds]})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="master seed; the same seed writes byte-identical files")
    p.add_argument("--defect-rate", type=float, default=0.0, metavar="R",
                   help="fraction of each dataset's records given ONE defect, round-robin over nan_run, flat_lead, "
                   "truncated_dat, malformed_header, missing_file (+ empty_report for MIMIC) (default 0)")  # fmt: skip
    p.add_argument("--cpsc-dx", choices=("snomed", "abbrev"), default="snomed",
                   help="CPSC2018 #Dx as SNOMED CT codes (CinC 2020/2021) or abbreviations (early 2020)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars and no log lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    sizes = {ds: getattr(args, f"n_{ds}") for ds in DATASETS}
    if set(datasets) - set(DATASETS) or any(n < 0 for n in sizes.values()) or not 0 <= args.defect_rate <= 1:
        parser.error(f"--datasets takes {','.join(DATASETS)}; sizes must be >= 0; --defect-rate must lie in [0, 1]")
    summary = write_all(args.out, seed=args.seed, sizes=sizes, defect_rate=args.defect_rate, datasets=datasets,
                        cpsc_dx=args.cpsc_dx, progress=not args.quiet)  # fmt: skip
    for ds, info in summary.items():
        n, bad, sec = info["records"], info["defects"], info["seconds"]
        print(f"{ds:9s} {n:6d} records {bad:5d} defects {sec:7.1f} s  {info['path']}")
    print(f"manifest: {Path(args.out) / MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
