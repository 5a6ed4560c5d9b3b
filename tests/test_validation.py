"""Validation retrains both configs on fresh seeds: each value equals a direct run of that config."""

from __future__ import annotations

import json
import math

import numpy as np
from omegaconf import OmegaConf

from clipsweep.histogram import NormHistogram
from clipsweep.recommendation import Recommendation, TrialNorms
from clipsweep.tracker import NullTracker
from clipsweep.training import build, train
from clipsweep.validation import Validation, validate

TINY = ("model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8", "train.steps=20",
        "train.eval_every=10", "optim.lr=0.05", "train.seed=5")  # fmt: skip


def _recommendation(best: TrialNorms, chosen: TrialNorms) -> Recommendation:
    return Recommendation(
        study="s", objective="val/loss", direction="minimize", clip=chosen.clip, params=chosen.params, trial=chosen,
        best=best, good=[best, chosen], histogram=best.histogram, threshold=chosen.clip["threshold"],
        interval=(0.05, 0.5), percentile=10.0, clip_fraction=0.9, rule="rule",
    )  # fmt: skip


def test_validate_runs_each_trials_own_config_on_fresh_seeds(config) -> None:
    histogram = NormHistogram()
    histogram.add(np.linspace(0.1, 1, 10))
    arms = {"best": (0.5, 0.05), "recommended": (0.05, 0.02)}  # threshold and learning rate travel together
    trials = {
        label: TrialNorms(
            i, 0.1, OmegaConf.to_container(config(*TINY, f"clip.threshold={t}", f"optim.lr={lr}"), resolve=True,
                                           enum_to_str=True), histogram, 2, {"clip.threshold": t, "optim.lr": lr},
        )
        for i, (label, (t, lr)) in enumerate(arms.items())
    }  # fmt: skip
    validation = validate(_recommendation(trials["best"], trials["recommended"]), 2, {"enabled": False})
    assert validation.seeds == [6, 7]  # base seed 5 + 1..k: not the seed the sweep selected on
    for arm in (validation.recommended, validation.best):
        threshold, lr = arms[arm.label]
        for seed, value in zip(validation.seeds, arm.values):
            overrides = (*TINY, f"clip.threshold={threshold}", f"optim.lr={lr}", f"train.seed={seed}")
            assert value == train(build(config(*overrides)), NullTracker()).val["val/loss"]
        assert math.isclose(arm.mean, sum(arm.values) / 2)
    assert validation.recommended.values != validation.best.values
    assert "validation on seeds [6, 7]" in validation.describe()
    names = {name for name, _, _ in validation.metrics()}
    assert names == {"validate/recommended_mean", "validate/recommended_std", "validate/best_mean", "validate/best_std"}
    stored = Validation.from_dict(json.loads(json.dumps(validation.to_dict())))  # as the study keeps it
    assert stored.covers(_recommendation(trials["best"], trials["recommended"]))
    assert not stored.covers(_recommendation(trials["recommended"], trials["best"]))
    assert stored.recommended.values == validation.recommended.values


def test_validate_trains_a_recommendation_that_is_the_best_trials_config_once(config, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    histogram = NormHistogram()
    histogram.add(np.linspace(0.1, 1, 10))
    resolved = OmegaConf.to_container(config(*TINY, "clip.threshold=0.3"), resolve=True, enum_to_str=True)
    best = TrialNorms(0, 0.1, resolved, histogram, 2, {"clip.threshold": 0.3})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    validation = validate(_recommendation(best, best), 2, {"enabled": True, "uri": uri})
    direct = [train(build(config(*TINY, "clip.threshold=0.3", f"train.seed={s}")), NullTracker()) for s in (6, 7)]
    assert validation.recommended.values == validation.best.values == [r.val["val/loss"] for r in direct]
    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert sorted(r.info.run_name for r in runs) == ["validate-recommended-seed6", "validate-recommended-seed7"]
    assert validation.describe().endswith("the recommendation is the best trial's config")
    assert validation.recommended_wins()  # export keeps taking it
