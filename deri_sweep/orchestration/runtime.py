"""Starting or joining Ray with the project's defaults (usage stats off, token auth coped with)."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def ray_env_defaults() -> None:
    """Environment every deri-sweep process sets before importing Ray.

    Usage-stats reporting is switched off, and Train V2 is kept on. Token
    authentication is left to Ray: a local ``ray.init()`` generates its own
    token; joining a cluster uses ``RAY_AUTH_TOKEN``/``~/.ray/auth_token``.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def init_ray(address: str | None = None, *, num_cpus: int | None = None, **kwargs: Any) -> Any:
    """Connect to a running cluster (``address``, or ``RAY_ADDRESS``) or start a local one.

    Args:
        address: ``"auto"``, ``"ray://host:10001"``, a GCS address, or ``None``
            for ``RAY_ADDRESS`` / a new local instance.
        num_cpus: CPUs of a NEW local instance (ignored when joining).
        **kwargs: passed to ``ray.init``.

    Returns:
        Ray's context object.
    """
    ray_env_defaults()
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        return ray.init(address=address, **kwargs)
    return ray.init(num_cpus=num_cpus, **kwargs)
