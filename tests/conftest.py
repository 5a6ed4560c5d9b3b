"""Shared fixtures and helpers: the real conf/ composed through Hydra, real sweeps run as users run them,
and a generated text-classification CSV."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from sweeper.cli import compose

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


@pytest.fixture
def text_csv(tmp_path: Path) -> Path:
    return write_text_csv(tmp_path / "comments.csv")


@pytest.fixture
def config() -> Callable[..., DictConfig]:
    """Compose the real conf/ with overrides, tracking off unless a test turns it on."""

    def make(*overrides: str) -> DictConfig:
        return compose(["tracking.enabled=false", *overrides])

    return make


TINY = (
    "model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8",
    "train.steps=20", "train.eval_every=5", "tracking.log_every=10",
)  # fmt: skip


def run_sweep(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "sweeper", "sweep", *TINY, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def load_study(cwd: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'clipsweep.db'}")


def mlflow_runs(cwd: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("clipsweep")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)
