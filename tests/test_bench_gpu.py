"""Smoke test of benchmarks/bench_gpu.py on CPU: both arms run and every figure line is printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_cpu_smoke_prints_figures_and_ratio() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("CPU SMOKE RUN") and "NOT GPU figures" in lines[0]
    assert re.fullmatch(r"ratio: \d+\.\d{2}", lines[-1]), lines[-1]
    assert float(lines[-1].split()[1]) > 0
    for arm in ("ours", "reference"):
        row = next(line for line in lines if re.match(rf"{arm}\s*: ", line))
        rate = re.search(r"([\d,.]+) samples/s", row)
        flops = re.search(r"([\d.]+) GFLOP/sample", row)
        assert rate and flops, row
        assert float(rate.group(1).replace(",", "")) > 0 and float(flops.group(1)) > 0
        breakdown = next(line for line in lines if re.match(rf"breakdown {arm}\s*: ", line))
        for phase in ("data to device", "forward", "backward", "optimizer", "sum"):
            assert re.search(rf"{phase} [\d.]+ ms", breakdown), breakdown
    ratio = next(line for line in lines if line.startswith("FLOP ratio reference/ours"))
    assert float(ratio.split()[-1]) > 1  # the tower at 256 tokens adds FLOPs to every reference step
