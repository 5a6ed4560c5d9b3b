"""Issue 5: trials per hour with 1 vs 2 workers on the service stack, and the stack's per-trial cost.

Starts a real ``mlflow server`` on a free loopback port (backend: a fresh PostgreSQL database) and
uses another fresh database for the Optuna study, on the PostgreSQL at 127.0.0.1:5432 (trust auth,
user postgres; both dropped at the end). Then, each a separate ``clipsweep sweep`` process with one
torch thread (``train.threads=1``: N workers on N cores):
  - the stack, 1 worker: N trials;
  - the stack, 2 workers on one study: N trials together;
  - the embedded default (SQLite study, SQLite MLflow store), 1 worker: N trials.
Throughput is trials per hour between the first trial's start and the last one's end (Optuna's
timestamps, so process start-up is left out); the per-trial cost is the mean trial duration.
Target: 2 workers >= 1.8x the trials per hour of 1.

    python benchmarks/scale.py [--trials 8] [--steps 1000]   # 1000: the default run length
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import optuna
import psycopg
from logging_overhead import start_server  # the same server start, with a PostgreSQL backend
from optuna.trial import TrialState

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def admin(statement: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(statement)


def sweep(cwd: Path, workers: int, study: str, trials: int, steps: int, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "clipsweep", "sweep", f"hydra.sweeper.study_name={study}",
               f"hydra.sweeper.n_trials={trials}", f"train.steps={steps}", "train.threads=1",
               "search=threshold", "hydra/sweeper/pruner=none", "hydra.sweeper.seed=0"]  # fmt: skip
    processes = [
        subprocess.Popen([*command, f"hydra.sweep.dir=multirun/{study}-{i}"], cwd=cwd, env={**os.environ, **env},
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(workers)
    ]  # fmt: skip
    for process in processes:
        _, err = process.communicate(timeout=3600)
        assert process.returncode == 0, err[-2000:]


def measure(storage: str | object, study: str) -> tuple[float, float, int]:
    """(trials per hour, mean trial seconds, trials) from the study's own timestamps."""
    done = [
        t for t in optuna.load_study(study_name=study, storage=storage).get_trials() if t.state == TrialState.COMPLETE
    ]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return len(done) / span * 3600, statistics.fmean(durations), len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    optuna_db, mlflow_db = f"bench_optuna_{tag}", f"bench_mlflow_{tag}"
    admin(f"CREATE DATABASE {optuna_db}")
    admin(f"CREATE DATABASE {mlflow_db}")
    storage = f"postgresql://postgres@127.0.0.1:5432/{optuna_db}"
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        server = None
        try:
            server, server_uri = start_server(cwd, f"postgresql://postgres@127.0.0.1:5432/{mlflow_db}", workers=2)
            stack = {"CLIPSWEEP_STORAGE": storage, "MLFLOW_TRACKING_URI": server_uri}
            results = {}
            for name, workers, env in (("stack-1", 1, stack), ("stack-2", 2, stack), ("embedded-1", 1, {})):
                sweep(cwd, workers, name, args.trials, args.steps, env)
                where = storage if env else f"sqlite:///{cwd / 'clipsweep.db'}"
                results[name] = measure(where, name)
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)
            for db in (optuna_db, mlflow_db):
                admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
                admin(f"DROP DATABASE IF EXISTS {db}")
    print(f"{args.trials} trials x {args.steps} steps (default model and task), one torch thread per worker:")
    for name, (per_hour, seconds, n) in results.items():
        print(f"  {name:<11} {per_hour:8.0f} trials/hour  mean trial {seconds:6.2f} s  ({n} trials)")
    scale = results["stack-2"][0] / results["stack-1"][0]
    overhead = results["stack-1"][1] / results["embedded-1"][1]
    print(f"  2 workers / 1 worker: {scale:.2f}x trials per hour (target >= 1.8)")
    print(f"  per-trial time, stack / embedded default: {overhead:.2f}x")


if __name__ == "__main__":
    main()
