"""The cores this process may actually use, which is what parallel jobs must split between them.

``os.cpu_count()`` counts the host's CPUs. A container limited by a CPU quota (Docker's ``--cpus``,
Kubernetes' ``limits.cpu``, a CI runner) or a process pinned by ``taskset``/a scheduler's affinity
sees every CPU of the host there, and splitting those between jobs gives each job far more torch
threads than it has cores: the oversubscription that turned a one-minute sweep into thirty.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cores(cpu_max: str) -> int | None:
    """Cores a cgroup v2 ``cpu.max`` line (``"<quota> <period>"`` or ``"max <period>"``) allows; None: no quota.

    A fractional quota rounds up: 1.5 CPUs can keep two threads busy part of the time, and rounding
    down would leave a 0.5-CPU container with no thread at all.
    """
    fields = cpu_max.split()
    if not fields or fields[0] == "max":
        return None
    quota = int(fields[0])
    period = int(fields[1]) if len(fields) > 1 else 100_000
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _cgroup_quota(root: Path) -> int | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max``, else v1 ``cfs_quota_us``/``cfs_period_us``)."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            return quota_cores(v2.read_text())
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.is_file():
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
            return quota_cores(f"{v1.read_text().strip()} {period}")
    except (OSError, ValueError):  # unreadable or unexpected: no quota we can see
        return None
    return None


def usable_cores(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity), capped by its cgroup's CPU quota; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    return max(1, min(cores, quota) if quota is not None else cores)
