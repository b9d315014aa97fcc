"""What a sweep's trials and probe tasks ask Ray for: resolved from a space, without Ray (``--dry-run`` reads it).

A trial's Train workers form one placement group of ``workers`` bundles ``{CPU, GPU}``, placed
``STRICT_PACK`` (every worker on one node) when a trial fits one node; a trial larger than the
largest node is placed ``PACK`` (fewest nodes, collectives over the network), with a warning at
the sweep's start (:func:`deri_sweep.orchestration.sweep.placement_strategy`). Its driver holds a
sliver of CPU on the head. Each probe task holds ``probes.cpus`` CPUs and a ``probes.gpus``
fraction of a GPU (unset, for GPU trials: 1 CPU and 0.25 GPU; for CPU trials: 0.25 CPU, no GPU).
"""

from __future__ import annotations

from typing import Any

from deri_sweep.orchestration.spaces import SearchSpace

#: GPU share of a probe task when the space leaves ``probes.gpus`` unset and the trials train on GPUs
DEFAULT_PROBE_GPUS = 0.25


def probe_request(space: SearchSpace) -> dict[str, float]:
    """One probe task's request: ``{"num_cpus", "num_gpus"}``."""
    gpus = space.probes.gpus
    if gpus is None:
        gpus = DEFAULT_PROBE_GPUS if space.trial.gpus_per_worker > 0 else 0.0
    cpus = space.probes.cpus
    if cpus is None:
        cpus = 1.0 if space.trial.gpus_per_worker > 0 else 0.25
    return {"num_cpus": float(cpus), "num_gpus": float(gpus)}


def resource_plan(space: SearchSpace) -> dict[str, Any]:
    """The requests of a trial's worker group, its driver, a probe task and the set-up tasks (JSON-ready)."""
    trial = space.trial
    bundle = {"CPU": trial.cpus_per_worker, **({"GPU": trial.gpus_per_worker} if trial.gpus_per_worker > 0 else {})}
    gpu = trial.gpus_per_worker > 0
    return {
        "trial_workers": {
            "bundles": trial.workers, "per_bundle": bundle,
            "total": {k: v * trial.workers for k, v in bundle.items()},
            "placement_strategy": "STRICT_PACK",
            "when_larger_than_a_node": "PACK: split over the fewest nodes (warned at the sweep's start)",
        },
        "trial_driver": {"CPU": trial.driver_cpus, "on_head": trial.driver_on_head, "trains": trial.trains_in_driver},
        "probe_task": {**probe_request(space), "placement": "DEFAULT (any node with room; outside the trial's group)"},
        "text_feature_build": {"num_cpus": 1.0, "num_gpus": 1.0 if gpu else 0.0},
        "stage": {"num_cpus": 0.0, "placement": "one task per GPU node" if gpu else "one task per node"},
    }  # fmt: skip


def describe_resources(space: SearchSpace) -> list[str]:
    """``--dry-run`` lines: each trial's and each probe task's request and placement."""
    plan = resource_plan(space)
    workers, probe = plan["trial_workers"], plan["probe_task"]
    per = ", ".join(f"{k} {v:g}" for k, v in workers["per_bundle"].items())
    total = ", ".join(f"{k} {v:g}" for k, v in workers["total"].items())
    driver = plan["trial_driver"]
    trial_cpus = workers["total"]["CPU"]
    head = " on the head" if driver["on_head"] else ""
    trial_line = (
        f"resources: each trial trains in its driver process (trial.in_driver: no Train worker group), holding "
        f"{{CPU {trial_cpus:g}}} on the driver's node while it trains; driver CPU {driver['CPU']:g}{head}"
        if driver["trains"]
        else f"resources: each trial: {workers['bundles']} worker bundle(s) of {{{per}}} = {{{total}}}, placement "
        f"{workers['placement_strategy']} (all on one node; a trial larger than any node: "
        f"{workers['when_larger_than_a_node']}); driver CPU {driver['CPU']:g}{head}"
    )
    return [
        trial_line,
        f"resources: each probe task: CPU {probe['num_cpus']:g}, GPU {probe['num_gpus']:g}, placement DEFAULT "
        f"(outside the trial's group, after its workers are released); text-feature build: CPU 1, GPU "
        f"{plan['text_feature_build']['num_gpus']:g}; staging: {plan['stage']['placement']}",
    ]
