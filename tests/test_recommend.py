"""The recommendation against numpy on the raw norms: stored trials in a real SQLite study, and a real sweep."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import load_study, mlflow_runs, run_sweep
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.errors import ConfigError
from sweeper.recommend import CONFIG_ATTR, NORMS_ATTR, RecommendSettings, recommend
from sweeper.telemetry import NormSegments

STEPS = 1000


def _norms_attr(norms: np.ndarray, threshold: float | None) -> dict[str, Any]:
    segments = NormSegments.empty(len(norms))
    with np.errstate(invalid="ignore"):
        clipped = np.isfinite(norms) & (norms > threshold) if threshold is not None else np.zeros(len(norms), bool)
    segments.add(np.arange(len(norms)), norms, clipped.astype(float))
    return segments.to_dict()


def _add(
    study: optuna.Study,
    value: float | None,
    norms: np.ndarray,
    clip: dict[str, Any],
    state: TrialState = TrialState.COMPLETE,
    status: str = "finished",
) -> None:
    threshold = clip.get("threshold") if clip["method"] == "norm" else None
    study.add_trial(
        create_trial(
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            params={"clip.threshold": float(clip.get("threshold", 1.0))},
            distributions={"clip.threshold": FloatDistribution(1e-3, 100.0, log=True)},
            user_attrs={
                NORMS_ATTR: _norms_attr(norms, threshold),
                CONFIG_ATTR: {"clip": clip, "optim": {"lr": 0.1}, "train": {"seed": 0}},
                "clipsweep.status": status,
            },
        )
    )


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")


def _lognormal(seed: int, scale: float = 0.2) -> np.ndarray:
    norms = np.random.default_rng(seed).lognormal(np.log(scale), 0.8, STEPS)
    norms[: STEPS // 10] *= 1000  # the early transient: huge norms before the loss settles
    return norms


def _steady(norms: np.ndarray) -> np.ndarray:
    kept = norms[STEPS // 10 :]
    return kept[np.isfinite(kept)]


def test_recommend_reproduces_numpy_percentile_and_excludes_diverged_and_nonfinite(tmp_path: Path) -> None:
    study = _study(tmp_path)
    a, b = _lognormal(0), _lognormal(1)
    a[500:520] = np.nan
    a[600:610] = np.inf
    norm = {"method": "norm", "threshold": 0.3, "norm_type": 2.0}
    _add(study, 0.10, a, norm)
    _add(study, 0.20, b, {**norm, "threshold": 0.5})
    _add(study, 0.01, _lognormal(2, 1e8), norm, status="diverged")  # best value, but diverged: never pooled
    _add(study, None, _lognormal(3, 1e8), norm, state=TrialState.PRUNED)
    _add(study, 0.15, _lognormal(4), {"method": "value", "threshold": 0.1})  # another method: not pooled

    recommendation = recommend(study, RecommendSettings(top_k=3, transient=0.1, percentile=90))
    assert recommendation.trials == [0, 1]
    assert recommendation.best.number == 0
    raw = np.concatenate([_steady(a), _steady(b)])
    assert recommendation.steps == raw.size and recommendation.histogram.nonfinite == 30
    error = recommendation.histogram.relative_error
    assert recommendation.threshold == pytest.approx(np.percentile(raw, 90), rel=error + 1e-3)
    assert recommendation.clip == {"method": "norm", "threshold": recommendation.threshold, "norm_type": 2.0}
    assert recommendation.clip_fraction == pytest.approx(np.mean(raw > recommendation.threshold), abs=0.01)
    assert recommendation.best_threshold == 0.3
    assert recommendation.best_percentile == pytest.approx(100 * np.mean(raw <= 0.3), abs=1.0)
    assert recommendation.optim == {"lr": 0.1}


def test_recommend_matched_rule_clips_as_often_as_the_best_trials(tmp_path: Path) -> None:
    study = _study(tmp_path)
    norms = [_lognormal(i) for i in range(3)]
    for i, (n, threshold) in enumerate(zip(norms, (0.25, 0.3, 0.4))):
        _add(study, 0.1 * (i + 1), n, {"method": "norm", "threshold": threshold, "norm_type": 2.0})

    one = recommend(study, RecommendSettings(top_k=1))
    assert one.threshold == pytest.approx(0.25, rel=one.histogram.relative_error + 1e-3)  # its own threshold back

    three = recommend(study, RecommendSettings(top_k=3))
    fractions = sorted(np.mean(_steady(n) > t) for n, t in zip(norms, (0.25, 0.3, 0.4)))
    raw = np.concatenate([_steady(n) for n in norms])
    assert three.percentile == pytest.approx(100 * (1 - fractions[1]))
    assert three.threshold == pytest.approx(
        np.percentile(raw, three.percentile), rel=three.histogram.relative_error + 1e-3
    )
    assert three.clip_fraction == pytest.approx(fractions[1], abs=0.01)
    assert "matched clip fraction" in three.rule


def test_recommend_adaptive_methods_recommend_their_own_parameter(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for i, z in enumerate((2.0, 3.0, 2.5)):
        _add(study, 0.1 * (i + 1), _lognormal(i), {"method": "zclip", "z_threshold": z, "alpha": 0.97})
    zclip = recommend(study, RecommendSettings(top_k=3))
    assert zclip.clip == {"method": "zclip", "z_threshold": 2.5, "alpha": 0.97}

    other = optuna.create_study(study_name="p", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    _add(other, 0.1, _lognormal(0), {"method": "percentile", "percentile": 10.0, "history": 1000, "cap": 5.0})
    auto = recommend(other, RecommendSettings(percentile=95))
    assert auto.clip["percentile"] == 95 and auto.clip["cap"] == 5.0  # AutoClip's own knob, not only a number
    assert auto.threshold == pytest.approx(np.percentile(_steady(_lognormal(0)), 95), rel=0.02)


def test_recommend_refuses_a_study_without_usable_trials(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _add(study, None, _lognormal(0), {"method": "norm", "threshold": 1.0}, state=TrialState.PRUNED)
    with pytest.raises(ValueError, match="no completed trial with recorded gradient norms"):
        recommend(study)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"top_k": 0}, "top_k"), ({"transient": 1.0}, "transient"), ({"percentile": 0}, "percentile")],
)
def test_recommend_settings_reject_bad_values(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"recommend\.{key}="):
        RecommendSettings(**options)


def test_recommend_on_a_real_sweep_matches_numpy_on_the_logged_steps(tmp_path: Path) -> None:
    run_sweep(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=real", "train.steps=40")
    study = load_study(tmp_path, "real")
    recommendation = recommend(study, RecommendSettings(top_k=2, transient=0.3, percentile=75))
    client, _ = mlflow_runs(tmp_path)
    raw = []
    for number in recommendation.trials:
        run_id = study.trials[number].user_attrs["mlflow_run_id"]
        text = Path(client.download_artifacts(run_id, "telemetry/steps.csv", str(tmp_path))).read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        raw += [float(r["grad/norm"]) for r in rows if int(r["step"]) >= 12 and int(r["finite"])]
    assert recommendation.steps == len(raw) == 2 * 28
    expected = np.percentile(raw, 75)
    assert math.isclose(recommendation.threshold, expected, rel_tol=recommendation.histogram.relative_error + 1e-3)


def test_recommend_falls_back_to_the_thresholds_when_the_best_trials_clip_every_step(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for i, threshold in enumerate((0.01, 0.02, 0.04)):  # far below every norm: every step clipped
        _add(study, 0.1 * (i + 1), _lognormal(i), {"method": "norm", "threshold": threshold, "norm_type": 2.0})
    recommendation = recommend(study, RecommendSettings(top_k=3))
    assert recommendation.threshold == pytest.approx(0.02)
    assert recommendation.clip_fraction > 0.99 and "no percentile reaches" in recommendation.rule
