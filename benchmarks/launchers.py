"""Launchers: what a trial costs on Ray and submitit against the in-process launcher, on this machine.

Each variant is a real ``clipsweep sweep`` (SQLite storage and MLflow store in a temp dir, pruning
off, ``train.threads=1``), run twice, with ``--small`` and ``--large`` trials; the difference
separates the per-trial cost from the sweep's fixed cost (start-up, connecting to the engine, the
end-of-sweep recommendation):

    per trial = (wall(large) - wall(small)) / (large - small); fixed = wall(small) - small * per trial

Variants: the in-process launcher (basic, one trial at a time), joblib with 2 jobs, submitit's local
executor (1 and 2 jobs), a Ray cluster started beforehand with ``ray start --head`` and 1 or 2
worker CPUs (``hydra.sweeper.n_jobs`` matching). Printed: seconds per trial, trials per hour,
per-trial overhead against basic, and the 2-worker Ray speed-up over 1 worker.

    python benchmarks/launchers.py [--steps 100] [--small 2] [--large 8]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# The cluster runs with token authentication and a token of its own (nothing read from ~/.ray).
ENV = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _sweep(cwd: Path, n_trials: int, steps: int, name: str, launcher: list[str]) -> float:
    args = [
        sys.executable, "-m", "clipsweep", "sweep", "search=threshold", "hydra/sweeper/pruner=none",
        f"train.steps={steps}", "train.threads=1", f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.study_name={name}-{n_trials}", *launcher,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_head(cpus: int, cwd: Path) -> str:
    port = _free_port()
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus}",
         "--include-dashboard=false", "--disable-usage-stats"],
        cwd=cwd, env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    return f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per trial")
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--large", type=int, default=8)
    args = parser.parse_args()
    variants: dict[str, tuple[int | None, list[str]]] = {
        "basic (in-process)": (None, []),
        "joblib, 2 jobs": (None, ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"]),
        "submitit_local, 1 job": (None, ["hydra/launcher=submitit_local"]),
        "submitit_local, 2 jobs": (None, ["hydra/launcher=submitit_local", "hydra.sweeper.n_jobs=2"]),
        "ray, 1 worker": (1, ["hydra/launcher=ray"]),
        "ray, 2 workers": (2, ["hydra/launcher=ray", "hydra.sweeper.n_jobs=2"]),
    }
    rows: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, (ray_cpus, launcher)) in enumerate(variants.items()):
            cwd = Path(tmp) / f"v{index}"
            cwd.mkdir()
            if ray_cpus is not None:
                node = Path(tmp) / f"node{index}"
                node.mkdir()
                launcher = [*launcher, f"+hydra.launcher.ray.init.address={_ray_head(ray_cpus, node)}"]
            try:
                small = _sweep(cwd, args.small, args.steps, f"v{index}", launcher)
                large = _sweep(cwd, args.large, args.steps, f"v{index}", launcher)
            finally:
                if ray_cpus is not None:
                    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV)
            per_trial = (large - small) / (args.large - args.small)
            rows[name] = (per_trial, small - args.small * per_trial)
            rate = 3600 / per_trial
            print(f"{name:<24} {per_trial:6.2f} s/trial  {rate:7.0f} trials/h  fixed {rows[name][1]:5.1f} s")
    basic = rows["basic (in-process)"][0]
    print(f"\n{args.steps} steps per trial; overhead per trial against basic (1 job at a time):")
    for name in ("submitit_local, 1 job", "ray, 1 worker"):
        print(f"  {name:<22} {rows[name][0] - basic:+6.2f} s ({rows[name][0] / basic:.2f}x)")
    for one, two in (("ray, 1 worker", "ray, 2 workers"), ("submitit_local, 1 job", "submitit_local, 2 jobs")):
        print(f"{two} / {one} throughput: {rows[one][0] / rows[two][0]:.2f}x")


if __name__ == "__main__":
    main()
