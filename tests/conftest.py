"""Shared fixtures: the real conf/ composed through Hydra, and a generated text-classification CSV."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

import pytest
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
