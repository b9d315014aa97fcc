"""Node-local staging of a prepared cache: one verified copy per node, corrupt copies redone, trials read it.

The first tests stage a real prepared cache (the synthetic MIMIC at 2 s) between local
folders, as a node copies from the shared mount; the last runs a sweep on a
``ray.cluster_utils.Cluster`` whose two worker nodes have separate folders as their
local disks (``DERI_LOCAL_DISK``, as the cluster configs set it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import ray_process_env, run_ablate

from deri_sweep.data.cache import SignalCache
from deri_sweep.data.staging import MANIFEST, StageError, stage_cache, stage_path


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


@pytest.fixture()
def source(short_caches, tmp_path) -> Path:
    """A private copy of the prepared cache (tests below corrupt it)."""
    copy = tmp_path / "shared" / "mimic"
    shutil.copytree(short_caches["mimic"], copy, ignore=shutil.ignore_patterns(".*"))
    return copy


def test_a_copy_is_complete_verified_and_then_reused(source, tmp_path):
    disk = tmp_path / "nvme"
    first = stage_cache(str(source), disk)
    assert first.path == stage_path(str(source), disk) and first.path.parent == disk / "deri-stage"
    assert _digests(first.path) == _digests(source) and first.copied == len(_digests(source)) and first.reused == 0
    shards = json.loads((source / "cache.json").read_text())["shards"]
    assert len(shards) >= 2 and all(f"shards/{name}" in _digests(first.path) for name in shards)
    assert len(SignalCache.open(first.path)) == len(SignalCache.open(source))  # it opens as the cache it copies
    again = stage_cache(str(source), disk)
    assert again.copied == 0 and again.reused == first.copied and again.bytes_copied == 0


def test_a_corrupted_or_truncated_copy_is_detected_and_redone(source, tmp_path):
    disk = tmp_path / "nvme"
    local = stage_cache(str(source), disk).path
    shard = next((local / "shards").glob("shard_*.npy"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    shard.write_bytes(bytes(data))
    index = local / "index.parquet"
    index.write_bytes(index.read_bytes()[:100])  # truncated
    redone = stage_cache(str(source), disk)
    assert redone.copied == 2 and _digests(local) == _digests(source)


def test_a_killed_copy_is_finished_by_the_next_call(source, tmp_path):
    disk = tmp_path / "nvme"
    local = stage_cache(str(source), disk).path
    # the state a copy killed mid-way leaves: its manifest incomplete and without the files not yet copied,
    # one shard half-written as .part, the later files absent
    manifest = json.loads((local / MANIFEST).read_text())
    done = sorted(manifest["files"])[:-3]
    for relative in sorted(manifest["files"])[-3:]:
        (local / relative).unlink()
    shard = local / done[-1]
    shard.with_name(f".{shard.name}.part").write_bytes(shard.read_bytes()[:1000])
    shard.unlink()
    manifest = {**manifest, "complete": False, "files": {k: manifest["files"][k] for k in done}}
    (local / MANIFEST).write_text(json.dumps(manifest))
    resumed = stage_cache(str(source), disk)
    assert resumed.copied == 4 and resumed.reused == len(done) - 1  # only what was missing
    assert _digests(local) == _digests(source) and json.loads((local / MANIFEST).read_text())["complete"]
    assert not list(local.rglob(".*.part"))


def test_a_changed_source_file_is_copied_again(source, tmp_path):
    disk = tmp_path / "nvme"
    local = stage_cache(str(source), disk).path
    reports = pd.read_parquet(source / "reports.parquet")
    reports.assign(text=reports["text"] + " edited").to_parquet(source / "reports.parquet")
    assert stage_cache(str(source), disk).copied == 1 and _digests(local) == _digests(source)


def test_a_corrupt_or_unfinished_source_is_refused(source, tmp_path):
    shard = next((source / "shards").glob("shard_*.npy"))
    good = shard.read_bytes()
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(StageError, match=rf"{shard.name}: sha256 differs from cache.json; the source cache is corrupt"):
        stage_cache(str(source), tmp_path / "nvme")
    shard.write_bytes(good)
    meta = json.loads((source / "cache.json").read_text())
    (source / "cache.json").write_text(json.dumps({**meta, "complete": False}))
    with pytest.raises(StageError, match="not finished"):
        stage_cache(str(source), tmp_path / "nvme")
    with pytest.raises(StageError, match="no readable cache.json"):
        stage_cache(str(tmp_path / "nowhere"), tmp_path / "nvme")


def test_a_uri_source_is_read_through_pyarrow(source, tmp_path):
    local = stage_cache(f"file://{source}", tmp_path / "nvme").path
    assert _digests(local) == _digests(source)


BASE = """\
search: grid
variants: {full: {}}
seeds: [1, 2]
baseline: full
base: {model.ecg.num_samples: 1000, optim.batch_size: 8, optim.epochs: 1, optim.t0: 10000, max_steps_per_epoch: 2}
scheduler: {type: none}
trial: {workers: 1, cpus_per_worker: 0.5, driver_cpus: 0, max_failures: 0}
probes: {datasets: []}
"""  # no probes: the test is about what the Train workers read


@pytest.mark.slow
@pytest.mark.integration
def test_each_node_stages_once_a_corrupt_copy_is_redone_and_trials_read_their_node(short_caches, tmp_path):
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from deri_sweep.data.staging import LOCAL_DISK_ENV
    from deri_sweep.orchestration.runtime import ray_env_defaults

    source = str(short_caches["mimic"])
    disks = [tmp_path / "node-a-nvme", tmp_path / "node-b-nvme"]
    # node a already holds a copy from an earlier sweep, since corrupted (one shard byte flipped, same size)
    earlier = stage_cache(source, disks[0]).path
    shard = next((earlier / "shards").glob("shard_*.npy"))
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))

    ray_env_defaults()
    with ray_process_env():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs the trial drivers only
        try:
            for disk in disks:
                cluster.add_node(num_cpus=1, env_vars={LOCAL_DISK_ENV: str(disk)})
            cluster.wait_for_nodes()
            space = tmp_path / "space.yaml"
            space.write_text(BASE)
            run = run_ablate(
                ["--space", str(space), "--out", "run", "--address", cluster.address, "--concurrency", "2",
                 "--no-report", "--caches", f"mimic={source}"],
                tmp_path, timeout=900,
            )  # fmt: skip
        finally:
            cluster.shutdown()
    log_file = tmp_path / "run" / "ablate.log"  # Ray's and the workers' lines (the console keeps ours)
    output = run.stdout + run.stderr + (log_file.read_text() if log_file.exists() else "")
    assert run.returncode == 0, output[-4000:]
    copies = [stage_path(source, disk) for disk in disks]
    for copy in copies:  # one verified copy on each node's own disk, equal to the shared cache
        assert [p.name for p in (copy.parent).iterdir() if not p.name.startswith(".")] == [copy.name]
        assert _digests(copy) == _digests(Path(source)), copy
    assert f"{shard}: staged copy differs from its source; copying it again" in output
    for copy in copies:  # one copy per node (node a: the corrupt shard only), not one per trial or per call
        assert output.count(f"staged {source} -> {copy} ") == 1, output[-4000:]
    assert output.count("staged copy reused") >= 2 and output.count("reading the node-local copy") >= 2
    # each trial's workers read their node's copy (the checkpoint records the cache the run read)
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert (trials["state"] == "COMPLETE").all() and len(trials) == 2
    read = set()
    for state in (tmp_path / "run" / "train").glob("trial_*/checkpoint_*/meta.json"):
        read.add(json.loads(state.read_text())["config"]["data"]["cache"])
    assert read and read <= {str(c) for c in copies}, read
