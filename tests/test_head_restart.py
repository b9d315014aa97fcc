"""The head's GCS dies mid-sweep and restarts from external Redis storage: the sweep finishes, nothing lost.

This is the local counterpart of ``gcsFaultToleranceOptions`` in clusters/kuberay-rayjob.yaml.
The test starts a real ``redis-server`` (loopback only, password, no persistence files) and a
Ray head with ``ray start --head`` whose GCS keeps its tables there, the way KubeRay configures
a fault-tolerant head: ``RAY_REDIS_ADDRESS`` and ``RAY_external_storage_namespace`` in the
head's environment and ``--redis-password``. A two-trial sweep runs through the CLI against
that head. While the first trial trains, the head's ``gcs_server`` is SIGKILLed, the cluster
runs a few seconds without it, and the same GCS binary is started again with its original
command line and environment (read from ``/proc`` before the kill).

Restarting only the GCS is what Ray's own tooling does in its GCS fault-tolerance tests
(``Node.kill_gcs_server()`` then ``Node.start_gcs_server()``, with the same arguments); from
the CLI, ``ray start --head`` a second time refuses ("Ray is trying to start at ..., but is
already running at ...") while the head's raylet is alive, so the test relaunches the process
itself. The restarted GCS reloads its job, node and actor tables from Redis, the head's raylet,
the trial's Train workers and the drivers reconnect, and the test checks that nothing was lost:
both trials COMPLETE with every epoch trained exactly once (the worker group never restarted,
``max_failures`` is 0), the second trial (new placement group, new actors) was scheduled after
the restart, every probe is recorded once, and the head's raylet is the process it was.

What this does not cover: under KubeRay the head container runs ``ray start --block``, which
kills every head process when the GCS dies, so the pod restarts and the sweep driver and trial
drivers (pinned to the head) die with it; that head loss is recovered with ``--resume``
(tests/test_faults.py, the killed-driver test). Only the processes of this head (its process
sessions) and this Redis are stopped afterwards, however the test ends.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from helpers import ablate_command, ray_start_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
pytest.importorskip("ray")

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    pytest.skip(
        "redis-server is not installed (Debian: apt-get install -y redis-server; .ci/run installs it when root)",
        allow_module_level=True,
    )

RAY = str(Path(sys.executable).with_name("ray"))
#: Seconds the cluster runs without a GCS: short of the 60 s (RAY_gcs_rpc_server_reconnect_timeout_s)
#: after which the raylet and the drivers give up on it.
OUTAGE_S = 5
EPOCHS = 3
SPACE = f"""\
search: grid
variants: {{full: {{}}}}
seeds: [42, 43]
baseline: full
base: {{model.ecg.num_samples: 1000, optim.batch_size: 8, optim.epochs: {EPOCHS}, optim.t0: 10000,
       max_steps_per_epoch: 4}}
scheduler: {{type: none}}
trial: {{workers: 1, cpus_per_worker: 0.5, driver_cpus: 0, max_failures: 0}}
probes: {{datasets: [ptbxl], fractions: [1.0], seeds: [0], epochs: 5, zero_shot: false, random_floor: false}}
"""


def _free_port() -> int:
    """A free TCP port on the loopback interface (outside Ray's default worker port range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _redis(port: int, password: str, *command: str) -> object:
    """Send one command to Redis (RESP, after AUTH) and return its parsed reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        stream = conn.makefile("rb")
        for args in (("AUTH", password), command):
            conn.sendall(b"".join([f"*{len(args)}\r\n".encode()] + [f"${len(a)}\r\n{a}\r\n".encode() for a in args]))
            reply = _read_reply(stream)
        return reply


def _read_reply(stream) -> object:
    """One RESP reply: simple string, error (raised), integer, bulk string or array."""
    line = stream.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        return [_read_reply(stream) for _ in range(max(int(rest), 0))]
    raise RuntimeError(f"redis: unexpected reply {line!r}")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after ``pid (comm)`` (state ppid pgrp session ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _session_processes(session: int) -> dict[int, str]:
    """Live processes of a process session: pid -> command name."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] != "Z" and int(stat[3]) == session:
            try:
                found[int(entry.name)] = (entry / "comm").read_text().strip()
            except OSError:
                continue
    return found


def _kill_session(session: int) -> None:
    """SIGKILL every process of one session (one that this test started), and only those."""
    for pid in _session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def _checkpoints(trial_storage: Path) -> list[str]:
    """Checkpoints the Train controller has registered (a folder on disk may still be in flight)."""
    try:
        results = json.loads((trial_storage / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return [r["checkpoint_dir_name"] for r in results]


@dataclass
class Redis:
    """A redis-server this test started: loopback port, password."""

    port: int
    password: str


@dataclass
class Head:
    """A Ray head this test started with external GCS storage, and the sessions to stop at the end."""

    env: dict[str, str]
    address: str
    gcs_port: int
    namespace: str
    sessions: list[int] = field(default_factory=list)
    children: list[subprocess.Popen] = field(default_factory=list)


@pytest.fixture
def redis(tmp_path):
    """A real redis-server on 127.0.0.1 with a password and no persistence, stopped however the test ends."""
    port, password = _free_port(), secrets.token_hex(16)
    data = tmp_path / "redis"
    data.mkdir()
    with open(tmp_path / "redis.log", "w") as log:
        server = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
             "--requirepass", password, "--save", "", "--appendonly", "no", "--dir", str(data)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def pong() -> bool:
            try:
                return _redis(port, password, "PING") == "PONG"
            except OSError:
                assert server.poll() is None, (tmp_path / "redis.log").read_text()[-2000:]
                return False

        wait_for(pong, "redis-server to answer PING", timeout=30)
        yield Redis(port, password)
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def head(redis, tmp_path):
    """``ray start --head`` with its GCS tables in ``redis`` (token auth on), stopped however the test ends."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in ("RAY_ADDRESS", "RAY_REDIS_ADDRESS", "RAY_external_storage_namespace"):
        env.pop(name, None)
    token = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True)
    assert token.returncode == 0 and (home / ".ray" / "auth_token").exists(), token.stderr
    namespace = f"deri-test-{secrets.token_hex(4)}"
    head_env = {**env, "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis.port}", "RAY_external_storage_namespace": namespace}
    gcs_port = _free_port()
    # a new session: every daemon `ray start` leaves behind stays in it, so teardown finds them all
    started = subprocess.Popen(
        [RAY, "start", "--head", "--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
         "--redis-password", redis.password, "--ray-client-server-port", str(_free_port()),
         "--dashboard-agent-listen-port", str(_free_port()), "--include-dashboard", "false",
         "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=ray_start_env(head_env, temp_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    found = Head(env, f"127.0.0.1:{gcs_port}", gcs_port, namespace, [started.pid])
    try:
        output, _ = started.communicate(timeout=180)
        assert started.returncode == 0, output[-3000:]
        yield found
    finally:
        started.kill()
        try:
            for session in found.sessions:
                _kill_session(session)
            for child in found.children:
                child.wait(timeout=30)
            wait_for(lambda: not any(_session_processes(s) for s in found.sessions), "the head to exit", timeout=30)
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _process_of(session: int, name: str) -> int:
    """The one live process called ``name`` in ``session``."""
    pids = [pid for pid, comm in _session_processes(session).items() if comm == name]
    assert len(pids) == 1, f"{name} in session {session}: {pids}"
    return pids[0]


def _loaded_tables(gcs_log: Path) -> list[dict[str, int]]:
    """Per GCS start, the size of each table it loaded from storage (gcs_init_data.cc log lines)."""
    starts: list[dict[str, int]] = []
    for match in re.finditer(r"Finished loading (.+?) table data, size = (\d+)", gcs_log.read_text()):
        table, size = match.group(1), int(match.group(2))
        if not starts or table in starts[-1]:
            starts.append({})
        starts[-1][table] = size
    return starts


def test_the_sweep_finishes_with_nothing_lost_when_the_head_gcs_restarts(head, redis, short_caches, tmp_path):
    space, run_dir = tmp_path / "space.yaml", tmp_path / "run"
    space.write_text(SPACE)
    train = run_dir / "train"
    caches = [f"{k}={v}" for k, v in short_caches.items()]
    args = ["--space", str(space), "--out", str(run_dir), "--concurrency", "1", "--address", head.address,
            "--no-report", "--min-free-gb", "0", "--caches", *caches]  # fmt: skip
    log = tmp_path / "ablate.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            ablate_command(args), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            env={**head.env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        # the first trial is training: one checkpoint registered, more epochs to go
        first = wait_for(lambda: [t for t in train.glob("trial_*") if _checkpoints(t)], "the first checkpoint")[0]
        trials_at_kill = {t.name for t in train.glob("trial_*")}
        raylet = _process_of(head.sessions[0], "raylet")
        gcs = _process_of(head.sessions[0], "gcs_server")
        proc = Path(f"/proc/{gcs}")
        command = proc.joinpath("cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environ = dict(e.split(b"=", 1) for e in proc.joinpath("environ").read_bytes().split(b"\0") if b"=" in e)
        cwd = os.readlink(proc / "cwd")
        gcs_log = Path(next(a for a in command if a.startswith(b"--stdout_filepath=")).split(b"=", 1)[1].decode())

        os.kill(gcs, signal.SIGKILL)
        wait_for(lambda: not _alive(gcs) and not _listening(head.gcs_port), "the GCS to die", timeout=30)
        time.sleep(OUTAGE_S)  # the cluster without its GCS: the raylet, the workers and the drivers wait
        assert not _listening(head.gcs_port) and driver.poll() is None and _alive(raylet)
        assert len(_checkpoints(first)) < EPOCHS, "the first trial ended before the GCS died: nothing was tested"

        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        restarted = subprocess.Popen(command, env=environ, cwd=cwd, start_new_session=True, **quiet)
        head.sessions.append(restarted.pid)
        head.children.append(restarted)
        wait_for(lambda: _listening(head.gcs_port), "the restarted GCS to listen", timeout=60)
        assert driver.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    output = log.read_text()
    assert "2 trials (0 failed)" in output, output[-3000:]

    # the GCS really restarted from Redis: its second start loaded the cluster's tables, and they live there
    assert restarted.poll() is None, "the restarted GCS exited"
    first_start, second_start = _loaded_tables(gcs_log)[-2:]
    assert first_start["node"] == 0 and first_start["actor"] == 0, first_start
    assert second_start["node"] >= 1 and second_start["job"] >= 1 and second_start["actor"] >= 1, second_start
    keys = _redis(redis.port, redis.password, "KEYS", f"RAY{head.namespace}@*")
    assert {f"RAY{head.namespace}@NODE", f"RAY{head.namespace}@KV"} <= set(keys), keys
    # the head node lived through it: the same raylet, never replaced
    assert _alive(raylet) and _process_of(head.sessions[0], "raylet") == raylet

    # nothing lost: both trials complete, every epoch trained exactly once (no worker group restarted) ...
    assert trials_at_kill == {first.name}, "the second trial must start after the restart"
    assert len(list(train.glob("trial_*"))) == 2
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert sorted(trials["seed"]) == [42, 43] and trials["trial_id"].is_unique
    assert (trials["state"] == "COMPLETE").all() and (trials["epochs"] == EPOCHS).all(), trials
    curves = pd.read_parquet(run_dir / "curves.parquet")
    for trial_id in trials["trial_id"]:
        epochs = curves[(curves["trial_id"] == trial_id) & (curves["metric"] == "val_total")]["epoch"]
        assert sorted(epochs) == list(range(1, EPOCHS + 1)), (trial_id, list(epochs))
    # ... and every probe recorded once, all of them ok
    results = pd.read_parquet(run_dir / "results.parquet")
    assert not results.duplicated(["trial_id", "variant", "task", "eval", "fraction", "probe_seed", "metric"]).any()
    probes = results[(results["eval"] == "linear_probe") & (results["metric"] == "test_auroc")]
    assert probes.groupby("trial_id").size().to_dict() == dict.fromkeys(trials["trial_id"], 4)
    assert (probes["status"] == "ok").all() and probes["value"].between(0, 1).all()
