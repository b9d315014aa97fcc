"""``benchmarks/gpu_check.py --cpu``: every check that can run on a CPU passes; the CUDA-only ones are listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cpu_mode_runs_the_cpu_checks_and_lists_the_cuda_only_ones_as_skipped(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if line[:1].isalpha()}
    for check in ("env", "recipe", "rows", "breakdown", "precision", "text_build", "probe_features"):
        assert status[check] == "ok", check
    for check in ("ray_epoch", "bench_gpu", "memory_caps"):
        assert status[check] == "skipped", check
    data = json.loads(out.read_text())
    assert data["mode"] == "cpu" and data["recipe"]["resume_exact"] is True
    assert [r["row"] for r in data["rows"]["rows"]] == ["full", "with_caption"]
    assert data["breakdown"]["host_ms"] > 0 and data["precision"]["fp32"] > 0
