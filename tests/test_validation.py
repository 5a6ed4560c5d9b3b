"""Validation retrains both configs on fresh seeds: each value equals a direct run of that config."""

from __future__ import annotations

import math

import numpy as np
from omegaconf import OmegaConf

from sweeper.recommend import Recommendation, TrialNorms
from sweeper.telemetry import NormHistogram
from sweeper.tracking import NullTracker
from sweeper.training import build, train
from sweeper.validation import validate

TINY = ("model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8", "train.steps=20",
        "train.eval_every=10", "optim.lr=0.05", "train.seed=5")  # fmt: skip


def test_validate_runs_both_configs_on_fresh_seeds(config) -> None:
    stored = OmegaConf.to_container(config(*TINY, "clip.threshold=0.5"), resolve=True, enum_to_str=True)
    histogram = NormHistogram()
    histogram.add(np.linspace(0.1, 1, 10))
    best = TrialNorms(0, 0.1, stored, histogram, 2)
    recommended = {"method": "norm", "threshold": 0.05, "norm_type": 2.0}
    recommendation = Recommendation(
        "s", "val/loss", "minimize", recommended, 0.05, 10.0, 0.9, "rule", best, [best], histogram, 0.5
    )
    validation = validate(recommendation, 2, {"enabled": False})
    assert validation.seeds == [6, 7]  # base seed 5 + 1..k: not the seed the sweep selected on
    for arm, threshold in ((validation.recommended, 0.05), (validation.best, 0.5)):
        for seed, value in zip(validation.seeds, arm.values):
            direct = train(build(config(*TINY, f"clip.threshold={threshold}", f"train.seed={seed}")), NullTracker())
            assert value == direct.val["val/loss"]
        assert math.isclose(arm.mean, sum(arm.values) / 2)
    assert validation.recommended.values != validation.best.values
    assert "validation on seeds [6, 7]" in validation.describe()
    names = {name for name, _, _ in validation.metrics()}
    assert names == {"validate/recommended_mean", "validate/recommended_std", "validate/best_mean", "validate/best_std"}
