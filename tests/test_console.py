"""The console of ``python -m deri_sweep.ablate``: our lines for the person, Ray's and Tune's output in a file.

The line count of a whole clean default run is checked in ``tests/test_default_run.py``
(on the run it already makes); here: what the capture does with output written below
Python (a child process inherits the redirected descriptors, as Ray's processes do), and
the progress callback on a real Tune run where one trial finishes and one fails.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import pytest

from deri_sweep.orchestration.console import Console, SweepProgress, failure_cause

SCRIPT = """
import subprocess, sys
from pathlib import Path
from deri_sweep.orchestration.console import Console

console = Console()
console.capture()  # no run directory yet: a temporary file holds the output
first = console.log_file
try:
    print("from python before the run directory exists", flush=True)
    subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); print('child stderr', file=sys.stderr)"])
    console.move_log(Path(sys.argv[1]))
    print("after the move", file=sys.stderr, flush=True)
    with console.stage("data") as stage:
        stage["detail"] = "caches mimic, ptbxl"
    console.error("error: something the person must see")
finally:
    console.release()
print("after release", first.exists())
"""


def test_captured_output_goes_to_the_log_and_our_lines_to_the_console(tmp_path):
    log = tmp_path / "run" / "ablate.log"
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    text = log.read_text()
    for line in ("from python before the run directory exists", "child stdout", "child stderr", "after the move"):
        assert line in text  # Python's output and a child process's, before and after the run directory existed
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("data") and lines[0].endswith(" s  caches mimic, ptbxl"), lines
    assert lines[1] == "after release False"  # stdout is back, and the temporary file was moved into the run dir
    assert run.stderr == "error: something the person must see\n" and "after release" not in text


def test_verbose_leaves_the_output_alone(tmp_path, capfd):
    console = Console(verbose=True, out=io.StringIO(), err=io.StringIO())
    console.capture(tmp_path / "ablate.log")
    print("shown", flush=True)
    console.release()
    assert "shown" in capfd.readouterr().out and not (tmp_path / "ablate.log").exists()


def test_the_cause_of_a_failure_is_its_innermost_exception_line():
    text = (
        "Failure # 1 (occurred at 2026-12-06)\nray.exceptions.RayTaskError(RuntimeError): ray::trial_driver()\n"
        '  File "trial.py", line 9, in trial_driver\nRuntimeError: trial 1a: pretraining failed: '
        "ValueError: checkpoint state.pt is corrupt\n"
    )
    cause = "RuntimeError: trial 1a: pretraining failed: ValueError: checkpoint state.pt is corrupt"
    assert failure_cause(text) == cause
    assert failure_cause("") == "unknown error"


@pytest.mark.slow
@pytest.mark.integration
def test_one_line_per_trial_event_with_the_bar_and_a_failure_s_cause(tmp_path):
    ray = pytest.importorskip("ray")
    from helpers import ray_process_env
    from ray import tune

    def trainable(config):  # defined here: pickled by value for Tune's trial actors
        if config["fail"]:
            raise ValueError("the synthetic twin has no such label set")
        tune.report({"epoch": 1.0, "val_total": 2.5, "objective": float("nan")})
        tune.report({"epoch": 1.0, "objective": 0.75, "final": 1.0})

    out = io.StringIO()
    console = Console(out=out, err=io.StringIO())
    progress = SweepProgress(console, trials=2, epochs=1, final_key="final", metric="val_total")
    with ray_process_env():
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"CPU": 1}),
                param_space={"fail": tune.grid_search([False, True])},
                tune_config=tune.TuneConfig(max_concurrent_trials=1, metric="objective", mode="max"),
                run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0, callbacks=[progress]),
            )
            tuner.fit()
            pickle.loads(pickle.dumps(progress))  # Tune saves its callbacks with the experiment state
        finally:
            ray.shutdown()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5, lines  # started, trained, finished; started, failed
    assert all(line.startswith("[") and "trials" in line and "ETA" in line for line in lines), lines
    assert lines[1].endswith("trained (val_total 2.5) in 0 s; probing") or "trained (val_total 2.5)" in lines[1]
    assert "finished" in lines[2] and "objective 0.75" in lines[2] and " 1/2 trials  50%" in lines[2]
    assert "FAILED: ValueError: the synthetic twin has no such label set" in lines[4], lines[4]
    assert " 2/2 trials 100%" in lines[4]
