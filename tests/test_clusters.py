"""The cluster configurations in clusters/: Ray's own validation, then deri-sweep's invariants.

Launcher YAMLs (``ray up``) go through the offline half of what ``ray up`` does before it
calls a cloud: ``prepare_config`` (Ray's provider defaults, merged setup commands, per-type
worker bounds, Docker checks) and ``validate_config`` (``ray-schema.json`` plus Ray's
structural checks). The provider steps after that (``bootstrap_config``, resource
autodetection) need cloud credentials and are not run. The KubeRay manifest is plain YAML
checked field by field. Nothing here contacts a cloud or starts Ray.
"""

from __future__ import annotations

import copy
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from deri_sweep.orchestration.spaces import TrialSpec

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"

#: One trial is a TorchTrainer with 4 one-GPU workers; GPU nodes must hold whole trials.
TRIAL_GPUS = 4
#: GPUs each instance type really has, so a typo in ``resources`` cannot over- or under-book a node.
KNOWN_GPUS = {"g5.12xlarge": 4, "p4d.24xlarge": 8, "a2-highgpu-4g": 4}
#: Sources that mean "anyone on the internet".
PUBLIC = {"0.0.0.0/0", "::/0"}
EXPECTED_LAUNCHERS = {"aws-g5.yaml", "aws-p4d.yaml", "gcp-a2.yaml"}
EXPECTED_MANIFESTS = {"kuberay-rayjob.yaml"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _is_manifest(path: Path) -> bool:
    return any("apiVersion" in d and "kind" in d for d in _docs(path))


ALL_FILES = sorted(CLUSTERS.glob("*.yaml"))
LAUNCHERS = [p for p in ALL_FILES if not _is_manifest(p)]
MANIFESTS = [p for p in ALL_FILES if _is_manifest(p)]


def _project_version() -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match, "pyproject.toml has no [project] version"
    return match.group(1)


def _gpu_trial_specs() -> dict[str, TrialSpec]:
    """The trial shape of every search space that trains on GPUs."""
    specs = {}
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        spec = TrialSpec(**(yaml.safe_load(path.read_text()).get("trial") or {}))
        if spec.gpus_per_worker > 0:
            specs[path.name] = spec
    return specs


@cache
def _prepared(name: str) -> dict[str, Any]:
    """The launcher config as ``ray up`` sees it after Ray's offline preparation and validation."""
    config = prepare_config(copy.deepcopy(_docs(CLUSTERS / name)[0]))
    validate_config(config)
    return config


def _workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


def _instance_type(node_config: dict[str, Any]) -> str:
    return node_config.get("InstanceType") or node_config.get("machineType") or ""


def _has_gpu_hardware(node_config: dict[str, Any]) -> bool:
    """AWS GPU families (g4dn, g5, p4d, ...), GCP accelerator-optimised types, or attached GPUs."""
    kind = _instance_type(node_config)
    return bool(re.match(r"^(p\d|g\d|gr\d)", kind) or re.match(r"^(a\d|g\d)-", kind)) or bool(
        node_config.get("guestAccelerators")
    )


def _is_spot(node_config: dict[str, Any]) -> bool:
    market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType")
    scheduling = node_config.get("scheduling") or {}
    return market == "spot" or scheduling.get("provisioningModel") == "SPOT" or bool(scheduling.get("preemptible"))


def _leading_comment(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines)


def _commented_commands(path: Path, needle: str) -> list[list[str]]:
    """Shell commands in the file's comments that contain ``needle`` (``\\`` continuations joined)."""
    text = "\n".join(line.split("#", 1)[1] for line in path.read_text().splitlines() if "#" in line)
    text = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line.strip()) for line in text.splitlines() if needle in line]


def _flag(tokens: list[str], name: str) -> str | None:
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


# --------------------------------------------------------------------------- every file


def test_the_expected_configurations_exist():
    assert {p.name for p in LAUNCHERS} >= EXPECTED_LAUNCHERS
    assert {p.name for p in MANIFESTS} >= EXPECTED_MANIFESTS


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_file_opens_with_how_to_launch_and_reach_the_dashboard(path):
    header = _leading_comment(path)
    assert header, f"{path.name} must start with a comment saying how to launch it"
    rel = f"clusters/{path.name}"
    if path in MANIFESTS:
        assert f"kubectl apply -f {rel}" in header
        assert "kubectl port-forward" in header and "8265" in header
    else:
        assert f"ray up {rel}" in header and f"ray down {rel}" in header
        assert f"ray dashboard {rel}" in header
        assert "ray get-auth-token --generate" in header


# --------------------------------------------------------------------------- launcher configs


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_ray_accepts_the_launcher_config(path):
    config = _prepared(path.name)
    validate_config(config)  # Ray's schema and structural checks; raises on any violation
    assert config["provider"]["type"] in {"aws", "gcp"}


def test_ray_validation_rejects_broken_configs():
    """The validation above is not vacuous: Ray rejects what a careless edit produces."""
    good = _docs(CLUSTERS / "aws-g5.yaml")[0]
    worker = next(iter(_workers(good)))

    gpus_as_text = copy.deepcopy(good)
    gpus_as_text["available_node_types"][worker]["resources"]["GPU"] = "4"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(gpus_as_text))

    no_resources = copy.deepcopy(good)
    del no_resources["available_node_types"][worker]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(no_resources))

    unknown_key = copy.deepcopy(good)
    unknown_key["head_start_commands"] = ["ray start --head"]  # misspelt head_start_ray_commands
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(unknown_key))


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_head_is_cpu_only(path):
    config = _prepared(path.name)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "the head must advertise GPU: 0 explicitly"
    assert head["resources"].get("CPU", 0) >= 4, "the head hosts the sweep driver and the trial drivers"
    assert not _has_gpu_hardware(head["node_config"]), "the head must be a CPU-only instance type"
    assert head["max_workers"] == 0


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_gpu_nodes_hold_whole_trials_and_scale_from_zero(path):
    config = _prepared(path.name)
    workers = _workers(config)
    assert workers, "no worker node type"
    specs = _gpu_trial_specs()
    for name, node in workers.items():
        gpus, cpus = node["resources"].get("GPU"), node["resources"].get("CPU")
        kind = _instance_type(node["node_config"])
        assert isinstance(gpus, int) and gpus > 0, f"{name}: set resources: {{GPU: n}} explicitly"
        assert kind in KNOWN_GPUS, f"{name}: add {kind!r} and its GPU count to KNOWN_GPUS"
        assert gpus == KNOWN_GPUS[kind], f"{name}: {kind} has {KNOWN_GPUS[kind]} GPUs, resources say {gpus}"
        assert gpus % TRIAL_GPUS == 0, f"{name}: {gpus} GPUs do not hold whole {TRIAL_GPUS}-GPU trials"
        assert node["min_workers"] == 0, f"{name}: GPU nodes must scale from zero"
        assert 0 < node["max_workers"] <= config["max_workers"]
        for space, spec in specs.items():
            trial_gpus = spec.workers * spec.gpus_per_worker
            assert gpus % trial_gpus == 0, f"{name}: {space} trials need {trial_gpus} GPUs"
            need = gpus // trial_gpus * spec.workers * spec.cpus_per_worker
            assert cpus >= need, f"{name}: {space} needs {need} CPUs next to the GPUs, resources say {cpus}"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_spot_node_types_have_an_on_demand_fallback(path):
    workers = _workers(_prepared(path.name))
    for name, node in workers.items():
        if not _is_spot(node["node_config"]):
            continue
        fallbacks = [
            other
            for other_name, other in workers.items()
            if not _is_spot(other["node_config"])
            and _instance_type(other["node_config"]) == _instance_type(node["node_config"])
            and other["resources"] == node["resources"]
        ]
        assert fallbacks, f"{name}: spot without an on-demand node type of the same shape"
        assert all(f.get("priority", 0) < node.get("priority", 0) for f in fallbacks), (
            f"{name}: spot must have the higher priority so the autoscaler tries it first"
        )


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_no_port_but_ssh_is_open_to_the_world(path):
    config = _prepared(path.name)
    provider = config["provider"]
    # Security-group rules Ray applies (AWS).
    for rule in provider.get("security_group", {}).get("IpPermissions", []):
        sources = {r["CidrIp"] for r in rule.get("IpRanges", [])} | {r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])}
        assert (rule.get("IpProtocol"), rule.get("FromPort"), rule.get("ToPort")) == ("tcp", 22, 22), rule
        assert not sources & PUBLIC, f"SSH must be limited to your CIDR, not {sources & PUBLIC}"
    # Rules the file tells you to create (AWS pre-created group, GCP firewall).
    aws_rules = _commented_commands(path, "authorize-security-group-ingress")
    gcp_rules = _commented_commands(path, "firewall-rules create")
    for tokens in aws_rules:
        if _flag(tokens, "--source-group"):
            continue  # traffic between the cluster's own nodes
        assert _flag(tokens, "--cidr") not in PUBLIC, tokens
        assert (_flag(tokens, "--protocol"), _flag(tokens, "--port")) == ("tcp", "22"), tokens
    for tokens in gcp_rules:
        ranges = _flag(tokens, "--source-ranges")
        if ranges is None:
            assert _flag(tokens, "--source-tags"), f"a rule without --source-ranges must be tag-scoped: {tokens}"
            continue
        assert not set(ranges.split(",")) & PUBLIC, tokens
        assert _flag(tokens, "--allow") == "tcp:22", tokens
    if provider["type"] == "aws":
        assert provider.get("security_group", {}).get("IpPermissions"), "declare the SSH rule explicitly"
    if provider["type"] == "gcp":
        assert gcp_rules, "document the firewall rules of the cluster's network"
        tags = {_flag(t, "--target-tags") for t in gcp_rules}
        for name, node in config["available_node_types"].items():
            node_config = node["node_config"]
            # Without explicit interfaces Ray picks the project's first subnet, often the `default`
            # network whose default-allow-ssh rule admits 0.0.0.0/0.
            subnets = [i.get("subnetwork", "") for i in node_config.get("networkInterfaces", [])]
            assert subnets and all("/subnetworks/" in s and not s.endswith("/default") for s in subnets), name
            assert set(node_config.get("tags", {}).get("items", [])) & tags, f"{name}: not covered by the rules"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_setup_commands_pin_ray_torch_and_the_project(path):
    config = _prepared(path.name)
    version = re.escape(_project_version())
    for role in ("head_setup_commands", "worker_setup_commands"):
        commands = config[role]  # prepare_config merged setup_commands in front
        text = "\n".join(commands)
        assert re.search(rf"ray\[[^\]]*\]=={re.escape(ray.__version__)}\b", text), (
            f"{role}: install ray=={ray.__version__}, the version `ray up` and `ray job submit` run here"
        )
        assert re.search(rf"deri-sweep @ git\+https://\S+/deri-sweep@v{version}\b", text), (
            f"{role}: install deri-sweep pinned to the tag v{_project_version()}"
        )
        torch_at = next((i for i, c in enumerate(commands) if re.search(r"\btorch==\d+\.\d+\.\d+\b", c)), None)
        project_at = next((i for i, c in enumerate(commands) if "deri-sweep @" in c), None)
        assert torch_at is not None, f"{role}: pin torch"
        assert torch_at < project_at, f"{role}: install torch before deri-sweep so it picks the build"
        on_cpu_index = "download.pytorch.org/whl/cpu" in commands[torch_at]
        assert on_cpu_index == (role == "head_setup_commands"), "CPU torch on the head, the CUDA build on GPU nodes"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_ray_starts_with_token_auth_and_without_usage_stats(path):
    config = _prepared(path.name)
    for role in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[role] if "ray start" in c]
        assert starts, f"{role}: no `ray start`"
        for command in starts:
            before = command.split("ray start", 1)[0]
            assert re.search(r"\bexport\b[^;&|]*\bRAY_AUTH_MODE=token\b", before), f"{role}: {command}"
            assert re.search(r"\bexport\b[^;&|]*\bRAY_USAGE_STATS_ENABLED=0\b", before), f"{role}: {command}"
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start, "the autoscaler needs its config"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_gpu_workers_stage_the_cache_on_a_mounted_local_disk(path):
    """Workers export DERI_LOCAL_DISK for their Ray processes, and a setup command mounts a disk there."""
    config = _prepared(path.name)
    start = next(c for c in config["worker_start_ray_commands"] if "ray start" in c)
    found = re.search(r"\bexport\b[^;&|]*\bDERI_LOCAL_DISK=(\S+?);", start.split("ray start", 1)[0])
    assert found, f"worker_start_ray_commands: export DERI_LOCAL_DISK before `ray start`: {start}"
    disk = found.group(1)
    assert any(f'mount "$dev" {disk}' in c for c in config["worker_setup_commands"]), f"nothing mounted at {disk}"
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "DERI_LOCAL_DISK" not in head_start  # the head runs no Train workers: no copy there
    if path.name.startswith("gcp"):  # a local SSD must be attached for the mount to find it
        for name, node_type in config["available_node_types"].items():
            if node_type["resources"].get("GPU"):
                disks = node_type["node_config"]["disks"]
                assert any(d.get("type") == "SCRATCH" and d.get("interface") == "NVME" for d in disks), name


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_the_token_is_distributed_not_committed(path):
    config = _prepared(path.name)
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN=" not in path.read_text(), "never put the token itself in a cluster file"


# --------------------------------------------------------------------------- KubeRay RayJob


@pytest.fixture(scope="module")
def manifest() -> list[dict[str, Any]]:
    return _docs(CLUSTERS / "kuberay-rayjob.yaml")


@pytest.fixture(scope="module")
def rayjob(manifest) -> dict[str, Any]:
    jobs = [d for d in manifest if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, "exactly one RayJob"
    assert jobs[0]["apiVersion"] == "ray.io/v1"
    return jobs[0]


def _containers(rayjob: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    spec = rayjob["spec"]["rayClusterSpec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, group in groups for c in group["template"]["spec"]["containers"]]


def _gpu_limit(container: dict[str, Any]) -> int:
    resources = container.get("resources", {})
    values = [resources.get(k, {}).get("nvidia.com/gpu", 0) for k in ("limits", "requests")]
    return max(int(v) for v in values)


def _cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_rayjob_runs_the_ablation_and_cleans_up(rayjob):
    from deri_sweep.ablate import parse_args

    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "deri_sweep.ablate"]
    args = parse_args(argv[3:])  # every flag exists in the real entry point
    assert args.space == "search_spaces/paper_ablation.yaml" and (ROOT / args.space).is_file()
    assert args.storage.startswith(("s3://", "gs://"))
    assert spec["shutdownAfterJobFinishes"] is True
    gpu_groups = [g for g in spec["rayClusterSpec"]["workerGroupSpecs"]]
    slots = sum(g["maxReplicas"] * _gpu_limit(g["template"]["spec"]["containers"][0]) for g in gpu_groups)
    assert args.concurrency == slots // TRIAL_GPUS, "--concurrency must match what the GPU groups can hold"


def test_rayjob_head_has_no_gpus(rayjob):
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert all(_gpu_limit(c) == 0 for c in head["template"]["spec"]["containers"])


def test_rayjob_workers_hold_one_trial_each(rayjob):
    specs = _gpu_trial_specs()
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert _gpu_limit(container) == TRIAL_GPUS
        assert group["minReplicas"] == 0, "GPU pods must scale from zero"
        cpus = _cpus(container["resources"]["limits"]["cpu"])
        for space, spec in specs.items():
            assert cpus >= spec.workers * spec.cpus_per_worker, f"{group['groupName']}: {space} needs more CPUs"


def test_rayjob_workers_stage_the_cache_on_a_pod_local_volume(rayjob):
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        container = spec["containers"][0]
        disk = next(e["value"] for e in container["env"] if e["name"] == "DERI_LOCAL_DISK")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == disk)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory", volume  # disk, not RAM


def test_rayjob_exposes_nothing_outside_the_cluster(manifest, rayjob):
    assert not [d for d in manifest if d.get("kind") == "Ingress"]
    for doc in manifest:
        if doc.get("kind") == "Service":
            assert doc.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert head.get("enableIngress") is not True


def test_rayjob_uses_token_auth_from_a_secret(manifest, rayjob):
    auth = rayjob["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    for name, container in _containers(rayjob):
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}
        assert env["RAY_USAGE_STATS_ENABLED"]["value"] == "0", name
    assert not [d for d in manifest if d.get("kind") == "Secret"], "create the token Secret with kubectl, not here"


def test_rayjob_pins_ray_and_the_project(rayjob):
    version = _project_version()
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    for name, container in _containers(rayjob):
        assert container["image"].startswith(f"rayproject/ray:{ray.__version__}-"), name
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(f"/v{version}.zip")
    packages = runtime_env["pip"]["packages"]
    assert any(re.fullmatch(rf"deri-sweep @ \S+/v{re.escape(version)}\.zip", p) for p in packages), packages
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", p) for p in packages), packages


#: Env that KubeRay sets itself with ``gcsFaultToleranceOptions`` (its validation rejects the first three by hand).
KUBERAY_SETS_WITH_GCS_FT = {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_USERNAME", "RAY_external_storage_namespace"}


def test_rayjob_gcs_is_fault_tolerant_with_an_external_redis(rayjob):
    """The head's GCS keeps its tables in Redis (KubeRay ``gcsFaultToleranceOptions``); the password is a Secret."""
    spec = rayjob["spec"]["rayClusterSpec"]
    assert "gcsFaultToleranceOptions" in spec, "enable GCS fault tolerance (KubeRay gcsFaultToleranceOptions)"
    options = spec["gcsFaultToleranceOptions"]
    assert set(options) <= {"redisAddress", "redisPassword", "redisUsername", "externalStorageNamespace"}, options
    host, _, port = options["redisAddress"].rpartition(":")
    assert host and port.isdigit(), f"redisAddress must be HOST:PORT, not {options['redisAddress']!r}"
    password = options["redisPassword"]
    assert set(password) == {"valueFrom"}, "the Redis password comes from a Secret, never a literal value"
    ref = password["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"], ref
    # the namespace defaults to the RayCluster's UID: one set of keys per cluster in a shared Redis
    assert "externalStorageNamespace" not in options, "leave externalStorageNamespace to KubeRay (the cluster UID)"
    # KubeRay rejects a RayJob that also sets these itself (ValidateRayClusterSpec)
    head = spec["headGroupSpec"]
    assert not {"redis-password", "redis-username"} & set(head["rayStartParams"]), head["rayStartParams"]
    for name, container in _containers(rayjob):
        names = {e["name"] for e in container.get("env", [])}
        assert not names & KUBERAY_SETS_WITH_GCS_FT, f"{name}: KubeRay sets {names & KUBERAY_SETS_WITH_GCS_FT}"
    annotations = rayjob["metadata"].get("annotations", {})
    assert not {"ray.io/ft-enabled", "ray.io/external-storage-namespace"} & set(annotations), annotations
    # the header says how to create the Secret the password is read from
    creates = [" ".join(t) for t in _commented_commands(CLUSTERS / "kuberay-rayjob.yaml", "kubectl create secret")]
    assert any(ref["name"] in c and f"--from-literal={ref['key']}=" in c for c in creates), "document the Redis Secret"
