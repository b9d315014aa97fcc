"""Smoke test of benchmarks/bench_data.py --cold --quick: both cold rates and the ratio are printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_data.py"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_cold_quick_prints_both_cold_rates_and_ratio() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cold", "--quick"],
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d{2}", lines[-1]), lines[-1]
    assert float(lines[-1].split()[1]) > 0
    for reader in ("random access", "shuffle buffer"):
        line = next(line for line in lines if line.startswith(reader))
        cold = re.search(r"cold ([\d,]+) samples/s/core", line)
        warm = re.search(r"warm ([\d,]+) samples/s/core", line)
        assert cold and warm, line
        assert float(cold.group(1).replace(",", "")) > 0
        assert float(warm.group(1).replace(",", "")) > 0
    dropped = next(line for line in lines if line.startswith("page cache before each cold pass"))
    match = re.search(r"at most ([\d.]+)%", dropped)
    if match:  # mincore available: the cold passes really started from an empty page cache
        assert float(match.group(1)) < 5.0, dropped
    assert any(line.startswith("training DataLoader reads by random access") for line in lines)
    workers = [line for line in lines if line.startswith("DataLoader workers")]
    assert len(workers) == 2 and all(re.search(r": \d+ at ", line) for line in workers), workers
