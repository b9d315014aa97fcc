"""Browser check: report.html renders offline in headless Chromium (skipped without a chromium binary)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from analysis.report import build_report

_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMIUM = next((p for c in _CANDIDATES if (p := shutil.which(c))), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium binary on PATH (install with: apt-get install -y chromium)"
    ),
]


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180, check=False)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the (still row-filtered) pixel bytes of a PNG, decoded with zlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_analysis import write_run_dir

    root = tmp_path_factory.mktemp("render") / "run-render"
    write_run_dir(root)
    return build_report(root)["report"]


def test_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    proc = chromium(tmp_path, f"--screenshot={png}", "--window-size=1400,3000", report.as_uri())
    assert png.is_file(), f"no screenshot; chromium rc={proc.returncode}: {proc.stderr[-2000:]}"
    width, height, raw = png_pixels(png)
    assert (width, height) == (1400, 3000)
    assert png.stat().st_size > 50_000  # a blank page compresses to a few kB
    assert len(set(raw)) > 100 and sum(b != 0 for b in raw[::97]) / len(raw[::97]) > 0.02
    assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]


def test_plotly_rendered_in_dom(report: Path, tmp_path: Path) -> None:
    proc = chromium(tmp_path, "--dump-dom", report.as_uri())
    dom = proc.stdout
    assert proc.returncode == 0 and '<section id="notes">' in dom, proc.stderr[-2000:]
    assert dom.count('class="plot-container plotly"') == 5  # ablation, curves, parallel, importance, cost
    assert dom.count("main-svg") >= 5 and "<svg" in dom
    assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]
