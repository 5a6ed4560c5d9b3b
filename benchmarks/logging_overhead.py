"""(b) A whole run with MLflow logging vs logging off: SQLite store, and an `mlflow server` on 127.0.0.1.

Every variant trains the default configuration from the same seed; variants are interleaved over
``--repeats`` rounds and the median wall time of each is compared with logging off. Targets:
SQLite <= 1.03, server <= 1.05. The server is started here on a free loopback port.

    python benchmarks/logging_overhead.py [--steps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from clipsweep.composition import compose
from clipsweep.tracking import make_tracker
from clipsweep.training import build, train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, backend: str | None = None, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """An ``mlflow server`` on a free loopback port (backend: a SQLite file in ``workdir`` by default)."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend or f"sqlite:///{workdir / 'server.db'}",
        "--artifacts-destination", str(workdir / "server-artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return process, uri
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("mlflow server did not come up within 120 s")


def timed_run(steps: int, uri: str | None) -> float:
    overrides = [f"train.steps={steps}"]
    overrides += [f"tracking.uri={uri}"] if uri else ["tracking.enabled=false"]
    config = compose(overrides)
    setup = build(config)
    start = time.perf_counter()
    tracker = make_tracker(config.tracking.uri, config.tracking.experiment, config.tracking.enabled)
    train(setup, tracker)
    tracker.flush()  # until everything is written: the tail a sweep would overlap with its next trial
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server, server_uri = start_server(workdir)
        try:
            variants = {"off": None, "sqlite": f"sqlite:///{workdir / 'local.db'}", "server": server_uri}
            for uri in variants.values():  # warm-up: imports, table creation, fonts
                timed_run(20, uri)
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, uri in variants.items():
                    times[name].append(timed_run(args.steps, uri))
        finally:
            server.terminate()
            server.wait(timeout=30)
    # This machine is shared and identical runs differ by a third in wall time; each repeat's
    # variants run back to back, so the median of per-repeat ratios cancels most of that drift.
    print(f"{args.steps}-step default run, {args.repeats} interleaved repeats:")
    for name, target in (("off", None), ("sqlite", 1.03), ("server", 1.05)):
        ratios = [t / off for t, off in zip(times[name], times["off"])]
        goal = f"   (target <= {target})" if target else ""
        print(f"  logging {name:7s} median {statistics.median(times[name]):6.2f} s | "
              f"median paired ratio {statistics.median(ratios):.3f}{goal}")  # fmt: skip
    print("  wall times (s):", {name: [round(t, 2) for t in values] for name, values in times.items()})


if __name__ == "__main__":
    main()
