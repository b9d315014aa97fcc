"""Look at a dataset root before training on it (``python -m deri_sweep.data.inspect``).

Reads every record with the same reader and conditioning as the cache builder
and reports what a researcher wants to know first: how many records were found
and read, why the others were skipped, label counts, and the sampling rates and
durations seen. ``--json`` prints one JSON object, including a per-record list.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from deri_sweep.data.parallel import map_chunks
from deri_sweep.data.prepare import clipped_samples, quality_warnings
from deri_sweep.data.readers import READERS, DatasetError, Reader, open_reader
from deri_sweep.data.readers.base import read_checked
from deri_sweep.data.record import RecordError

log = logging.getLogger(__name__)


def inspect_chunk(reader: Reader, keys: list[str], number: int) -> list[dict[str, Any]]:
    """Read ``keys`` and describe each record (chunk ``number`` is unused).

    Returns:
        One dict per record: ``id``, ``ok``, ``reason``, ``detail``, ``labels``,
        ``fs``, ``seconds``, ``repaired``, ``degraded``, ``warnings`` (``[reason, detail]`` pairs,
        ``clipped`` and ``interpolated`` at prepare's default thresholds included).
    """
    out = []
    for key in keys:
        try:
            rec = read_checked(reader, key)
        except RecordError as exc:
            out.append({"id": key, "ok": False, "reason": exc.reason, "detail": exc.detail, "labels": {}})
            continue
        out.append(
            {
                "id": key,
                "ok": True,
                "reason": "",
                "detail": "",
                "labels": {k: list(v) for k, v in rec.labels.items()},
                "fs": float(rec.fs),
                "seconds": round(rec.n_samples / rec.fs, 3),
                "repaired": int(rec.repaired),
                "degraded": bool(rec.degraded),
                "warnings": [
                    list(w) for w in quality_warnings(rec, key, clipped_samples(rec.signal), reader.options.window)
                ],
            }
        )
    return out


def inspect_root(root: str | Path, fmt: str, *, workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Read every record of a root and summarise.

    Args:
        root: dataset root.
        fmt: reader format.
        workers: reader processes.
        progress: show a progress bar (on stderr).

    Returns:
        ``{"root", "format", "records_found", "records_read", "skipped": {reason: n},
        "label_counts": {set: {class: n}}, "sampling_rates": {fs: n},
        "durations_s": {"min", "median", "max"}, "degraded", "repaired_records",
        "records": [per-record dicts]}``.
    """
    reader = open_reader(fmt, root)
    keys = reader.keys()
    chunks = {n: keys[i : i + 256] for n, i in enumerate(range(0, len(keys), 256))}
    parts = dict(map_chunks(reader, chunks, inspect_chunk, workers=workers, progress=progress, desc=f"inspect {fmt}"))
    records = [r for n in sorted(parts) for r in parts[n]]
    ok = [r for r in records if r["ok"]]
    labels: dict[str, Counter] = {name: Counter() for name in reader.label_sets}
    for r in ok:
        for name, classes in r["labels"].items():
            labels.setdefault(name, Counter()).update(classes)
    seconds = sorted(r["seconds"] for r in ok)
    return {
        "root": str(root),
        "format": fmt,
        "records_found": len(records),
        "records_read": len(ok),
        "skipped": dict(sorted(Counter(r["reason"] for r in records if not r["ok"]).items())),
        "label_counts": {name: dict(counts.most_common()) for name, counts in labels.items()},
        "sampling_rates": {str(k): v for k, v in sorted(Counter(r["fs"] for r in ok).items())},
        "durations_s": {"min": seconds[0], "median": seconds[len(seconds) // 2], "max": seconds[-1]} if seconds else {},
        "degraded": sum(r["degraded"] for r in ok),
        "repaired_records": sum(r["repaired"] > 0 for r in ok),
        "records": records,
    }


def format_summary(report: dict[str, Any]) -> str:
    """Human-readable text of :func:`inspect_root`'s result (without the per-record list)."""
    lines = [
        f"{report['root']} ({report['format']})",
        f"  records found: {report['records_found']}",
        f"  records read:  {report['records_read']}",
        f"  degraded (a lead all NaN -> zeros): {report['degraded']}",
        f"  with repaired NaN runs: {report['repaired_records']}",
        f"  sampling rates (Hz: records): {report['sampling_rates']}",
        f"  durations (s): {report['durations_s']}",
    ]
    if report["skipped"]:
        lines.append("  skipped:")
        lines += [f"    {reason}: {n}" for reason, n in report["skipped"].items()]
        examples = [r for r in report["records"] if not r["ok"]][:5]
        lines.append("  e.g.")
        lines += [f"    {r['detail']}" for r in examples]
    for name, counts in report["label_counts"].items():
        shown = ", ".join(f"{c}: {n}" for c, n in list(counts.items())[:20])
        more = f" (+{len(counts) - 20} more)" if len(counts) > 20 else ""
        lines.append(f"  labels [{name}]: {shown}{more}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m deri_sweep.data.inspect",
        description="Read every record of a dataset root and report what was found, read and skipped (with reasons), "
        "label counts, sampling rates and durations.",
    )
    parser.add_argument("root", type=Path, help="dataset root folder")
    parser.add_argument("--format", required=True, choices=sorted(READERS), help="layout of the root")
    parser.add_argument("--json", action="store_true", help="print one JSON object (with a per-record list) on stdout")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="reader processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = inspect_root(args.root, args.format, workers=args.workers, progress=not args.json)
    except (DatasetError, ValueError) as exc:  # ValueError: an option out of range, as in prepare
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
