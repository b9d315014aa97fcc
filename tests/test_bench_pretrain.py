"""Smoke test of benchmarks/bench_pretrain.py --quick: both paths run and the last line is the ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pretrain.py"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_run_prints_table_and_ratio() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d{2}", lines[-1]), lines[-1]
    assert float(lines[-1].split()[1]) > 0
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("ours ", "reference "))}
    assert set(rows) == {"ours", "reference"}
    flops = {name: float(row[5]) for name, row in rows.items()}  # GFLOP/sample column
    assert flops["reference"] > 3 * flops["ours"] > 0  # the tower at 256 tokens dominates a reference step
    assert any(line.startswith("FLOP ratio reference/ours") for line in lines)
