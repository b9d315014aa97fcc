"""What ``python -m deri_sweep.ablate`` prints: our stages and trials, with Ray's and Tune's output in a file.

A clean run prints one line per stage (data, Ray, text features, staging, sweep, tables,
report) with its time, and during the sweep one line per trial event (started, trained,
finished with its objective, pruned, failed with its cause), each led by a progress bar
over trials x (training, probing) with an ETA from the work already done. On a terminal
the bar is also redrawn in place between events.

Unless ``verbose``, everything else written to this process's stdout and stderr -- Ray's
start-up lines, the worker and Train-controller logs Ray streams to the driver, Tune's
and our own INFO logging, the data stage's progress bars -- goes to one log file in the
run directory (:meth:`Console.capture` redirects the file descriptors 1 and 2, so the
Ray processes started afterwards inherit the file too), and Tune's status table is off
(``RunConfig(verbose=0)``, Ray Tune's own verbosity setting). Our lines keep going to
the original stdout (errors to the original stderr): the terminal, or the job log under
``ray job submit``.
"""

from __future__ import annotations

import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray import tune

#: the run directory's file that receives Ray's, Tune's and the library's own output (without --verbose)
LOG_NAME = "ablate.log"


def _stream_of(stream: TextIO, fd: int) -> TextIO:
    """A stream that keeps writing where ``stream`` writes now, even after ``fd`` is redirected.

    The real stdout/stderr get a duplicate of their descriptor; a replaced stream (pytest's
    capture, an IDE console) is used as it is.
    """
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8")
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        pass
    return stream


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Console:
    """The person-facing output of one ``ablate`` run.

    Args:
        verbose: leave stdout/stderr alone (Ray's and Tune's output on the console, as Ray prints it).
        out: where our lines go (default: this process's stdout as it is now).
        err: where errors go (default: this process's stderr as it is now).
    """

    def __init__(self, verbose: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.verbose = verbose
        self.out = out or _stream_of(sys.stdout, 1)
        self.err = err or _stream_of(sys.stderr, 2)
        self.log_file: Path | None = None
        self._saved: tuple[int, int] | None = None
        self._live = False  # a bar is drawn on the current terminal line
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (Tune saves its callbacks with the experiment's state): the streams are not kept."""
        return {**self.__dict__, "out": None, "err": None, "_saved": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A restored console writes to this process's stdout and stderr."""
        self.__dict__.update(state)
        self.out, self.err = sys.stdout, sys.stderr

    # ---------------------------------------------------------------- lines
    def line(self, text: str = "") -> None:
        """One line of ours (clears a bar drawn in place first)."""
        self.clear_live()
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        """An error line, on the original stderr."""
        self.clear_live()
        print(text, file=self.err, flush=True)

    def live(self, text: str) -> None:
        """Redraw ``text`` in place (terminals only; elsewhere nothing: the event lines carry the bar)."""
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self.out.flush()
            self._live = True

    def clear_live(self) -> None:
        """Remove a bar drawn in place."""
        if self._live:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self._live = False

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[dict[str, Any]]:
        """Time one stage and print its line when it ends: ``name  time  detail``.

        Yields:
            A dict; set ``"detail"`` in it to change the line's detail, ``"seconds"`` is filled in at the end.
        """
        info: dict[str, Any] = {"detail": detail}
        started = time.perf_counter()
        yield info
        info["seconds"] = time.perf_counter() - started
        self.line(f"{name:<14s}{_duration(info['seconds']):>10s}  {info['detail']}".rstrip())

    # ---------------------------------------------------------------- Ray's output
    def capture(self, log_file: Path | None = None) -> None:
        """Send this process's stdout and stderr (file descriptors 1 and 2) to ``log_file``.

        Without a file yet (the run directory does not exist), a temporary file takes the
        output until :meth:`move_log`. A no-op when ``verbose``.
        """
        if self.verbose:
            return
        if log_file is None:
            fd, name = tempfile.mkstemp(prefix="deri-ablate-", suffix=".log")
            os.close(fd)
            log_file = Path(name)
        sys.stdout.flush()
        sys.stderr.flush()
        if self._saved is None:
            self._saved = (os.dup(1), os.dup(2))
        target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(target)
        self.log_file = Path(log_file)

    def move_log(self, log_file: Path) -> None:
        """Continue the captured output in ``log_file`` (the run directory now exists), keeping what came so far."""
        if self._saved is None or self.log_file is None or self.log_file == log_file:
            return
        previous = self.log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        with open(log_file, "ab") as out:
            out.write(previous.read_bytes())
        self.capture(log_file)
        previous.unlink(missing_ok=True)

    def release(self, keep_temporary: bool = False) -> None:
        """Give stdout and stderr back (after the run, or before a traceback must reach the person).

        Args:
            keep_temporary: keep the temporary log (the run stopped before its run directory existed).
        """
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        if self.log_file is not None and self.log_file.name.startswith("deri-ablate-") and not keep_temporary:
            self.log_file.unlink(missing_ok=True)  # never moved into a run directory: nothing ran

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the captured output ('' when nothing is captured)."""
        if self.log_file is None or not self.log_file.exists():
            return ""
        sys.stdout.flush()
        sys.stderr.flush()
        text = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class _TrialState:
    """What the progress bar knows of one trial."""

    trained: float = 0.0  # fraction of its epochs done
    probed: bool = False
    done: bool = False
    started: float = field(default_factory=time.perf_counter)
    objective: float = math.nan


def failure_cause(text: str) -> str:
    """The line of an error's text that names its cause (the last exception line), at most 300 characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in reversed(lines):  # the innermost "SomeError: message" line, not Ray's trailing notes
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in head:
            return line[:300]
    return lines[-1][:300] if lines else "unknown error"


class SweepProgress(tune.Callback):
    """A Tune callback: one console line per trial event, led by the progress bar over trials x (training, probing).

    Args:
        console: where the lines go.
        trials: trials the sweep plans (grows when more start).
        epochs: pretraining epochs of a trial (the bar's fraction of its training).
        final_key: the key marking a trial's final report (its probes ran; its objective is in it).
        metric: the pretraining metric named in a trained trial's line.
    """

    def __init__(self, console: Console, trials: int, epochs: int, final_key: str, metric: str) -> None:
        self.console = console
        self.total = max(1, trials)
        self.epochs = max(1, epochs)
        self.final_key = final_key
        self.metric = metric
        self.states: dict[str, _TrialState] = {}
        self.started = time.perf_counter()
        self._drawn = 0.0

    def setup(self, **info: Any) -> None:
        """Tune calls this when the sweep starts."""
        self.started = time.perf_counter()

    # ------------------------------------------------------------ the bar
    def fraction(self) -> float:
        """Work done: each trial is two equal units, training (by epochs) and probing."""
        units = sum(min(1.0, s.trained) + (1.0 if s.probed or s.done else 0.0) for s in self.states.values())
        return min(1.0, units / (2 * self.total))

    def bar(self, width: int = 20) -> str:
        """``[#######.............]  35%  ETA 4 min 10 s`` (ETA: elapsed x remaining / done)."""
        done = self.fraction()
        filled = round(done * width)
        elapsed = time.perf_counter() - self.started
        eta = _duration(elapsed * (1 - done) / done) if done > 0.02 else "--"
        finished = sum(s.done for s in self.states.values())
        bar = "#" * filled + "." * (width - filled)
        return f"[{bar}] {finished:>2d}/{self.total} trials {done:4.0%}  ETA {eta:<12s}"

    def _event(self, text: str) -> None:
        self.console.line(f"{self.bar()} {text}")

    def _state(self, trial: Any) -> _TrialState:
        key = str(trial)
        if key not in self.states:
            self.states[key] = _TrialState()
            self.total = max(self.total, len(self.states))
        return self.states[key]

    # ------------------------------------------------------------ Tune's hooks
    def on_step(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Redraw the bar in place about once a second (terminals only)."""
        now = time.perf_counter()
        if self.console.tty and now - self._drawn >= 1.0:
            self._drawn = now
            self.console.live(self.bar())

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial started (or restarted)."""
        state = self._state(trial)
        state.started = time.perf_counter()
        self._event(f"{trial} started")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        """An epoch (training progress) or the final report (probes done, objective known)."""
        state = self._state(trial)
        if result.get(self.final_key):
            state.probed, state.objective = True, float(result.get("objective", math.nan))
            return
        epoch = float(result.get("epoch", 0.0) or 0.0)
        was_trained = state.trained >= 1.0
        state.trained = max(state.trained, epoch / self.epochs)
        if state.trained >= 1.0 and not was_trained:
            value = result.get(self.metric)
            shown = f" ({self.metric} {value:.4g})" if isinstance(value, (int, float)) else ""
            self._event(f"{trial} trained{shown} in {_duration(time.perf_counter() - state.started)}; probing")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Finished with its objective, or stopped early by the scheduler (pruned)."""
        state = self._state(trial)
        state.done = True
        took = _duration(time.perf_counter() - state.started)
        if state.probed:
            self._event(f"{trial} finished in {took}: objective {state.objective:.4g}")
        else:
            epoch = state.trained * self.epochs
            state.trained = 1.0  # its remaining work will not happen: count it as done
            self._event(f"{trial} pruned after epoch {epoch:.0f} ({took})")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Failed: the cause, read from the trial's error file."""
        state = self._state(trial)
        state.done, state.trained, state.probed = True, 1.0, True
        text = ""
        for read in (lambda: Path(trial.error_file).read_text() if trial.error_file else "", trial.get_error):
            try:  # this node's copy of the error file first (storage is synced later), then the storage's
                text = read() or ""
            except Exception:  # a file not there yet, or storage that cannot be read here
                text = ""
            if text:
                break
        self._event(f"{trial} FAILED: {failure_cause(text) if text else 'see the log'}")
