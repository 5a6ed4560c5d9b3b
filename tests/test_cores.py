"""The cores a process may use: affinity and cgroup CPU quota, not the host's CPU count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipsweep.cores import quota_cores, usable_cores


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [("max 100000", None), ("100000 100000", 1), ("150000 100000", 2), ("50000 100000", 1),
     ("400000 100000", 4), ("800000 200000", 4), ("-1 100000", None), ("", None)],
)  # fmt: skip
def test_quota_cores_reads_cgroup_v2_cpu_max(cpu_max: str, cores: int | None) -> None:
    assert quota_cores(cpu_max) == cores


def test_usable_cores_is_capped_by_a_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))


def test_usable_cores_reads_a_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert usable_cores(tmp_path) == 1


def test_usable_cores_follows_the_process_affinity() -> None:
    """A process pinned to one CPU (taskset, a scheduler) gets one core, whatever the host has."""
    pinned = (
        "import os; from clipsweep.cores import usable_cores; "
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cores())"
    )
    done = subprocess.run([sys.executable, "-c", pinned], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "1"


def test_usable_cores_without_cgroup_files_is_the_affinity(tmp_path: Path) -> None:
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))
