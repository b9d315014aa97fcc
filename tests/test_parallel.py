"""Chunked process-parallel map: Ctrl-C stops it at once (queued chunks cancelled), not after every chunk ran."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from helpers import wait_for

CHILD = """
import sys, time
from pathlib import Path
from deri_sweep.data.parallel import map_chunks

def slow(reader, keys, number):
    time.sleep(0.5)
    with open(reader, "a") as fh:
        fh.write(f"{number}\\n")
    return number

if __name__ == "__main__":
    import signal
    # as in a terminal: a process started in the background by a non-interactive shell (CI) inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for _ in map_chunks(sys.argv[1], {i: [str(i)] for i in range(40)}, slow, workers=2, progress=False):
            pass
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


def test_ctrl_c_cancels_the_queued_chunks(tmp_path: Path):
    done, script = tmp_path / "done.txt", tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(done)], stdout=subprocess.PIPE, text=True)
    wait_for(lambda: done.exists() and len(done.read_text().split()) >= 2, "two finished chunks", timeout=60)
    before = len(done.read_text().split())
    child.send_signal(signal.SIGINT)  # what Ctrl-C sends to the parent (the workers ignore it)
    out, _ = child.communicate(timeout=60)
    finished = done.read_text().split()
    assert child.returncode == 130 and "interrupted" in out
    # only the chunks running or already in the executor's call queue (2 workers + 2 + 1 queued ahead) finish;
    # before the fix all 40 ran first
    assert len(finished) <= before + 2 + 3 < 40, (before, finished)
