"""Threads: does the default (``train.threads`` unset) keep runs fast alone and side by side?

Runs the default ``clipsweep run`` (1000 steps, tracking off) as separate processes, as users do:
  - alone with ``train.threads=1`` and ``train.threads=<cores>`` (the fastest of them is the
    solo reference) and with the default;
  - two default runs at the same time.
Each variant is repeated ``--repeats`` times, interleaved; medians of wall time are compared.
Targets (issue 13): the default alone within 1.1x of the fastest thread setting; two concurrent
default runs each within 1.3x of one alone.

    python benchmarks/threads.py [--repeats 3] [--steps 1000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from clipsweep.cores import usable_cores


def _start(cwd: str, steps: int, extra: list[str]) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "clipsweep", "run", f"train.steps={steps}", "tracking.enabled=false", *extra]
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _timed(cwd: str, steps: int, runs: list[list[str]]) -> list[float]:
    """Start ``runs`` together; each one's wall time."""
    started = time.perf_counter()
    processes = [_start(cwd, steps, extra) for extra in runs]
    times = []
    for process in processes:
        assert process.wait() == 0, "a run failed"
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    cores = usable_cores()
    variants = {
        "alone, 1 thread": [["train.threads=1"]],
        f"alone, {cores} threads": [[f"train.threads={cores}"]],
        "alone, default": [[]],
        "two at once, default": [[], []],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            for name, runs in variants.items():
                times[name] += _timed(cwd, args.steps, runs)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:<22} {value:6.1f} s (median of {len(times[name])})")
    fastest = min(medians["alone, 1 thread"], medians[f"alone, {cores} threads"])
    print(f"default alone / fastest thread setting: {medians['alone, default'] / fastest:.3f} (target <= 1.1)")
    together = medians["two at once, default"] / medians["alone, default"]
    print(f"two at once / default alone: {together:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
