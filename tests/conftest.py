"""Shared fixtures and helpers: the real conf/ composed through Hydra, real sweeps run as users run them,
and a generated text-classification CSV."""

from __future__ import annotations

import csv
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from clipsweep.composition import compose
from clipsweep.cores import CGROUP_ROOT, usable_cores

TOXIC = ["idiot", "stupid", "hate", "moron", "trash", "loser", "dumb", "ugly"]
CLEAN = ["thanks", "great", "helpful", "agree", "nice", "interesting", "welcome", "useful"]
FILLER = ["the", "this", "article", "you", "is", "a", "really", "edit", "page", "comment", "and", "so"]


def write_text_csv(path: Path, n: int = 200, seed: int = 0) -> Path:
    """A toxic-comment-like CSV: label 1 rows contain an insult among filler words."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["comment_text", "toxic"])
        for i in range(n):
            label = i % 2
            words = [*rng.choices(FILLER, k=rng.randint(4, 12)), rng.choice(TOXIC if label else CLEAN)]
            rng.shuffle(words)
            writer.writerow([" ".join(words).capitalize() + "!", label])
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need PostgreSQL or an mlflow server are ``stack`` tests, wherever they live; ``cluster``
    tests live in one file (see ``pytest_xdist_auto_num_workers``)."""
    for item in items:
        if {"postgres_url", "mlflow_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
    homes = sorted({item.path.name for item in items if item.get_closest_marker("cluster")})
    if len(homes) > 1:
        raise pytest.UsageError(f"cluster tests in {', '.join(homes)}: keep them in one file, which one xdist "
                                "worker runs test after test (they share the machine's Ray processes)")  # fmt: skip


WORKER_MEMORY = 3 * 2**30
"""What ``-n auto`` leaves each worker: a worker with the sweeps it starts peaked at ~4.2 GB of Python
processes (test_hydra_sweeper.py and test_batched_launcher.py, one worker, RSS sampled every 0.5 s);
peaks of different workers seldom meet."""


def _available_memory() -> int | None:
    """Bytes this process could still take: MemAvailable, capped by a cgroup v2 memory limit."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = (CGROUP_ROOT / "memory.max").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int((CGROUP_ROOT / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return available


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core this process may use (a CPU quota or affinity counts, which
    xdist's own guess from ``os.cpu_count()`` does not see), as many as the memory holds.

    README's command runs ``--dist loadfile``: a file's tests stay in one worker, one after another.
    Tests in different files share nothing but the real services, which take concurrent clients: each
    test run has its own databases and mlflow server port, and no test stops PostgreSQL. The Ray and
    submitit tests, which end every Ray process on the machine (``ray stop --force``) and find their
    jobs in ``ps``, all live in ``test_launching.py``, so they never run beside one another."""
    cores, memory = usable_cores(), _available_memory()
    return max(1, cores if memory is None else min(cores, memory // WORKER_MEMORY))


@pytest.fixture
def text_csv(tmp_path: Path) -> Path:
    return write_text_csv(tmp_path / "comments.csv")


@pytest.fixture
def config() -> Callable[..., DictConfig]:
    """Compose the real conf/ with overrides, on the CPU with tracking off unless a test says otherwise.

    ``train.device=auto`` would put the model on a GPU where there is one, and the tests compare
    against CPU references (and CPU bit-exactness); CUDA behaviour has its own ``cuda``-marked tests.
    """

    def make(*overrides: str) -> DictConfig:
        return compose(["tracking.enabled=false", "train.device=cpu", *overrides])

    return make


TINY = (
    "model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8",
    "train.steps=20", "train.eval_every=5", "tracking.log_every=10", "train.device=cpu",
)  # fmt: skip
"""A tiny run, on the CPU wherever the suite runs (as ``config`` composes): the sweeps, runs and workers
the tests start behave on a GPU machine as in CI on a CPU one, without a CUDA start-up per process.
A later ``train.device=...`` wins; the ``cuda``-marked tests run the device path on purpose."""


def run_sweep(
    cwd: Path, *args: str, env: dict[str, str] | None = None, returncode: int = 0
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "clipsweep", "sweep", *TINY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == returncode, done.stdout[-3000:] + done.stderr[-3000:]
    return done


SWEPT_STUDY = "cmd"


@pytest.fixture(scope="session")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a finished 4-trial sweep's stores (study ``cmd``), for the commands that read one.

    On the CPU wherever it runs: export's reproduce command is checked against these trials to the last
    digit, which the issue asks of the CPU (cuDNN's RNN kernels do not promise it run to run).
    """
    cwd = tmp_path_factory.mktemp("swept")
    run_sweep(cwd, "hydra.sweeper.n_trials=4", f"hydra.sweeper.study_name={SWEPT_STUDY}", "train.steps=40")
    return cwd


def load_study(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'clipsweep.db'}")


def mlflow_runs(cwd: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("clipsweep")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


def _admin(statement: str) -> None:
    import psycopg

    # CREATE/DROP DATABASE cannot run in a transaction.
    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(statement)


def _fresh_database(name: str) -> Iterator[str]:
    try:
        _admin(f"CREATE DATABASE {name}")
    except Exception as err:  # .ci/run starts PostgreSQL; in CI an unreachable server is a failure
        message = f"PostgreSQL on 127.0.0.1:5432 is not reachable: {err}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        others = f"datname = '{name}' AND pid <> pg_backend_pid()"
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {others}")
        _admin(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database created for this test run on the real PostgreSQL, dropped after it."""
    yield from _fresh_database(f"clipsweep_test_{uuid.uuid4().hex[:10]}")


def with_pythonpath(path: Path) -> dict[str, str]:
    """An environment that also imports from ``path`` (a user's own package), keeping the current path."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port, its backend a fresh PostgreSQL database."""
    backend = _fresh_database(f"clipsweep_mlflow_{uuid.uuid4().hex[:10]}")
    backend_url = next(backend)
    port = free_port()
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    log = (artifacts.parent / "mlflow-server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_url,
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start; see {log.name}") from None
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        next(backend, None)  # drop its database
