"""The recommendation rule on synthetic studies (stored in a real SQLite study) and on a real sweep.

The synthetic studies are the situations that broke the first rule: a good band narrower than the
searched range, one lucky trial among bad neighbours, bimodal norms, top trials that clipped every
step or never clipped, a threshold that goes with its learning rate. Norm statistics are checked
against numpy on the raw norms.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from conftest import load_study, mlflow_runs, run_sweep
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from clipsweep.errors import ConfigError
from clipsweep.names import CONFIG_ATTR, NORMS_ATTR
from clipsweep.recommend import RecommendSettings, recommend
from clipsweep.telemetry import NormSegments

STEPS = 1000
THRESHOLD = FloatDistribution(0.01, 100.0, log=True)
LR = FloatDistribution(1e-3, 1.0, log=True)
BASELINE = 0.167  # the adding problem's chance-level MSE


def _norms_attr(norms: np.ndarray, threshold: float | None) -> dict[str, Any]:
    segments = NormSegments.empty(len(norms))
    with np.errstate(invalid="ignore"):
        clipped = np.isfinite(norms) & (norms > threshold) if threshold is not None else np.zeros(len(norms), bool)
    segments.add(np.arange(len(norms)), norms, clipped.astype(float))
    return segments.to_dict()


def _add(
    study: optuna.Study,
    value: float | None,
    params: dict[str, float],
    norms: np.ndarray | None = None,
    method: str = "norm",
    state: TrialState = TrialState.COMPLETE,
    status: str = "finished",
    reached: int | None = None,
) -> None:
    """A trial as the sweep stores it: params with their distributions, the resolved config, the norms."""
    clip: dict[str, Any] = {"method": method}
    if "clip.threshold" in params:
        clip |= {"threshold": params["clip.threshold"], "norm_type": 2.0}
    norms = _lognormal(len(study.trials)) if norms is None else norms
    distributions = {"clip.threshold": THRESHOLD, "optim.lr": LR, "clip": CategoricalDistribution(["norm", "none"])}
    study.add_trial(
        create_trial(
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            params=params,
            distributions={k: distributions[k] for k in params},
            intermediate_values={} if reached is None else {reached: BASELINE},
            user_attrs={
                NORMS_ATTR: _norms_attr(norms, clip.get("threshold")),
                CONFIG_ATTR: {
                    "clip": clip,
                    "optim": {"lr": params.get("optim.lr", 0.1)},
                    "train": {"seed": 0, "steps": STEPS},
                },
                "clipsweep.status": status,
            },
        )
    )


def _study(tmp_path: Path, name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'db.sqlite'}")


def _lognormal(seed: int, scale: float = 0.2) -> np.ndarray:
    norms = np.random.default_rng(seed).lognormal(np.log(scale), 0.8, STEPS)
    norms[: STEPS // 10] *= 1000  # the early transient: huge norms before the loss settles
    return norms


def _steady(norms: np.ndarray) -> np.ndarray:
    kept = norms[STEPS // 10 :]
    return kept[np.isfinite(kept)]


def _band(threshold: float, rng: np.random.Generator, low: float = 0.02, high: float = 0.2) -> float:
    """A task that learns only for thresholds in [low, high] (best in its log-centre), else stays at chance."""
    if not low <= threshold <= high:
        return BASELINE * (1 + 0.05 * rng.random())
    centre, half = math.sqrt(low * high), math.log(high / low) / 2
    return 1e-3 * (1 + 3 * (math.log(threshold / centre) / half) ** 2) * (1 + 0.3 * rng.random())


def _sweep(
    tmp_path: Path, seed: int, objective: Callable[[float, np.random.Generator], float], n: int = 20
) -> optuna.Study:
    """n log-uniform thresholds drawn with ``seed``, scored by ``objective`` (pruned when at chance, as the
    median pruner does once a few trials exist)."""
    rng = np.random.default_rng(seed)
    study = _study(tmp_path, f"s{seed}")
    for i, threshold in enumerate(np.exp(rng.uniform(math.log(0.01), math.log(100.0), n))):
        value = objective(float(threshold), rng)
        pruned = i >= 5 and value > 0.1 and rng.random() < 0.7
        _add(
            study,
            value,
            {"clip.threshold": float(threshold)},
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        )
    return study


def test_recommend_stays_inside_a_band_narrower_than_the_searched_range_and_is_stable(tmp_path: Path) -> None:
    recommendations = [recommend(_sweep(tmp_path, seed, _band)) for seed in range(6)]
    for r in recommendations:
        assert 0.02 <= r.threshold <= 0.2  # a trial that learned, never an extrapolation
        assert r.trial is not None and r.trial.value < 0.01 and not r.extrapolated
        low, high = r.interval
        assert 0.02 <= low <= r.threshold <= high <= 0.2  # the uncertainty is the band the sweep saw
    thresholds = [r.threshold for r in recommendations]
    assert max(thresholds) / min(thresholds) <= 2.0  # six sampler seeds, one answer within 2x


def test_recommend_prefers_a_good_neighbourhood_over_one_lucky_trial(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for threshold, value in ((0.03, 0.004), (0.05, 0.003), (0.08, 0.0035), (0.12, 0.004)):
        _add(study, value, {"clip.threshold": threshold})
    _add(study, 0.001, {"clip.threshold": 5.0})  # the best value, alone among trials at chance
    for threshold in (3.0, 4.0, 7.0, 9.0):
        _add(study, BASELINE, {"clip.threshold": threshold})
    r = recommend(study, RecommendSettings(tolerance=0.2))
    assert r.best.number == 4
    assert r.threshold in (0.03, 0.05, 0.08, 0.12) and r.interval == (0.03, 0.12)


def test_recommend_weighs_a_pruned_trial_by_the_share_of_its_steps_it_trained(tmp_path: Path) -> None:
    """Two good bands; the best trial sits in the one whose pruned neighbours ran 90% of their steps
    (they failed for real), the other's pruned neighbours stopped at step 100, when every run was
    still at chance (the pruner's coin flips). Counted alike, the best trial's neighbourhood looked as
    good as any and it stood; weighted by what they saw, the band with early stops wins."""
    study = _study(tmp_path)
    for threshold, value in ((0.02, 0.0009), (0.03, 0.0013), (0.045, 0.0012)):  # the best trial is here
        _add(study, value, {"clip.threshold": threshold})
    for threshold in (0.025, 0.037, 0.055):
        _add(study, None, {"clip.threshold": threshold}, state=TrialState.PRUNED, reached=900)
    for threshold, value in ((2.0, 0.0010), (3.0, 0.0012), (4.5, 0.0011)):
        _add(study, value, {"clip.threshold": threshold})
    for threshold in (2.5, 3.7, 5.5):
        _add(study, None, {"clip.threshold": threshold}, state=TrialState.PRUNED, reached=100)
    r = recommend(study)
    assert r.best.number == 0
    assert r.threshold in (2.0, 3.0, 4.5) and r.interval is not None and 2.0 <= r.interval[0] <= r.interval[1] <= 4.5


def test_recommend_keeps_the_best_trial_when_its_neighbours_back_it(tmp_path: Path) -> None:
    # The best trial sits at the band's upper end; its neighbours are good too, so it stands, though the
    # centre of the good trials lies lower.
    study = _study(tmp_path)
    for threshold, value in ((0.05, 0.0030), (0.08, 0.0032), (0.12, 0.0031), (0.18, 0.0025), (0.25, 0.0033)):
        _add(study, value, {"clip.threshold": threshold})
    for threshold in (2.0, 5.0, 10.0):
        _add(study, BASELINE, {"clip.threshold": threshold})
    r = recommend(study)
    assert r.trial is not None and r.trial.number == r.best.number == 3 and r.threshold == 0.18
    assert r.rule.startswith("the best trial") and r.interval == (0.05, 0.25)


@pytest.mark.parametrize("scale", [0.2, 1e-4], ids=["norms-near-thresholds", "norms-far-below"])
def test_recommend_does_not_follow_a_bimodal_norm_distribution(tmp_path: Path, scale: float) -> None:
    # Each trial's norms: two modes four decades apart (a solved RNN: tiny, with rare spikes).
    def bimodal(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.where(
            rng.random(STEPS) < 0.8,
            rng.lognormal(np.log(scale), 0.3, STEPS),
            rng.lognormal(np.log(scale * 1e4), 0.3, STEPS),
        )

    study = _study(tmp_path)
    rng = np.random.default_rng(0)
    for i, threshold in enumerate(np.geomspace(0.01, 10, 13)):
        _add(study, _band(float(threshold), rng), {"clip.threshold": float(threshold)}, bimodal(i))
    r = recommend(study)
    assert 0.02 <= r.threshold <= 0.2
    pooled = np.concatenate([_steady(bimodal(n)) for n in r.trials])
    assert r.steps == pooled.size
    assert r.clip_fraction == pytest.approx(np.mean(pooled > r.threshold), abs=0.01)
    assert r.percentile == pytest.approx(100 * np.mean(pooled <= r.threshold), abs=1.0)


@pytest.mark.parametrize(
    ("thresholds", "clipped"),
    [((0.01, 0.014, 0.02, 0.028, 0.04), 1.0), ((10.0, 14.0, 20.0, 28.0, 40.0), 0.0)],
    ids=["clipped-every-step", "never-clipped"],
)
def test_recommend_when_the_top_trials_clipped_every_step_or_never(
    tmp_path: Path, thresholds: tuple[float, ...], clipped: float
) -> None:
    study = _study(tmp_path)
    for i, threshold in enumerate(thresholds):
        _add(study, 0.01 * (1 + 0.02 * i), {"clip.threshold": threshold})  # all five equally good
    for threshold in (0.5, 1.0, 2.0):  # the middle of the range does worse
        _add(study, 0.1, {"clip.threshold": threshold})
    r = recommend(study)
    assert min(thresholds) <= r.threshold <= max(thresholds)  # their own thresholds decide, no percentile does
    assert r.interval == (min(thresholds), max(thresholds))
    assert r.clip_fraction == pytest.approx(clipped, abs=0.01)


def test_recommend_prefers_a_good_clipping_trial_to_a_plateau_that_never_clipped(tmp_path: Path) -> None:
    # Five thresholds far above every steady-state norm (they trained unclipped) did about as well as the
    # best, and agree with each other; two thresholds that clipped did best, among worse neighbours.
    study = _study(tmp_path)
    for i, threshold in enumerate((10.0, 14.0, 20.0, 28.0, 40.0)):
        _add(study, 0.0102 + 0.0001 * i, {"clip.threshold": threshold})
    for threshold, value in ((0.3, 0.0100), (0.4, 0.0101), (0.1, 0.05), (0.05, 0.06)):
        _add(study, value, {"clip.threshold": threshold})
    never = recommend(study, RecommendSettings(tolerance=0.1))
    assert never.trial is not None and never.trial.clipped > 0
    assert never.threshold in (0.3, 0.4) and 0 < never.clip_fraction < 1
    assert "never clipped left out" in never.rule
    # Without the clipping ones, the plateau is what the sweep supports.
    plateau = _study(tmp_path, "plateau")
    for i, threshold in enumerate((10.0, 14.0, 20.0, 28.0, 40.0)):
        _add(plateau, 0.0102 + 0.0001 * i, {"clip.threshold": threshold})
    _add(plateau, 0.05, {"clip.threshold": 0.1})
    r = recommend(plateau, RecommendSettings(tolerance=0.1))
    assert 10.0 <= r.threshold <= 40.0 and "left out" not in r.rule


def test_recommend_keeps_the_learning_rate_with_its_threshold(tmp_path: Path) -> None:
    # Clipping bounds the step: what learns is lr x threshold near 0.003, on a diagonal band.
    study = _study(tmp_path)
    rng = np.random.default_rng(1)
    for _ in range(40):
        threshold, lr = (
            float(np.exp(rng.uniform(math.log(0.01), math.log(100)))),
            float(np.exp(rng.uniform(math.log(1e-3), 0))),
        )
        product = math.log10(threshold * lr / 0.003)
        value = 1e-3 * (1 + 4 * product**2) if abs(product) < 0.5 else BASELINE
        _add(study, value, {"clip.threshold": threshold, "optim.lr": lr})
    r = recommend(study)
    assert abs(math.log10(r.threshold * r.params["optim.lr"] / 0.003)) < 0.5
    assert r.params["optim.lr"] == r.trial.params["optim.lr"] == r.optim["lr"] == r.config["optim"]["lr"]
    assert r.clip == r.trial.clip  # the trial's own config: exported and reproduced as it ran


def test_recommend_says_a_lone_good_trial_leaves_its_threshold_unbounded(tmp_path: Path) -> None:
    # One trial learned; its neighbours stayed at chance: an interval of one point is no uncertainty.
    study = _study(tmp_path)
    for threshold, value in ((0.03, BASELINE), (0.3, 0.002), (3.0, BASELINE), (30.0, BASELINE * 1.01)):
        _add(study, value, {"clip.threshold": threshold})
    r = recommend(study)
    assert r.threshold == 0.3 and r.interval == (0.3, 0.3)
    assert "uncertainty: not bounded: no other trial near 0.3 came within tolerance of the best" in r.describe()
    assert "resume the study with more trials: the same sweep with hydra.sweeper.study_name=s and a" in r.describe()
    _add(study, 0.0021, {"clip.threshold": 0.35})
    assert "uncertainty: thresholds 0.3..0.35 were within tolerance of the best there (2 good trials)" in (
        recommend(study).describe()
    )


def test_recommend_says_when_the_sweep_measured_no_difference_between_its_trials(tmp_path: Path) -> None:
    # An adding task no trial learned in its steps: all at chance to 1%, but two runs went badly.
    study = _study(tmp_path)
    for threshold, value in ((0.03, 0.1681), (0.1, 0.1683), (0.2, 0.1673), (1.0, 0.4101), (3.0, 0.1685),
                             (10.0, 0.2331)):  # fmt: skip
        _add(study, value, {"clip.threshold": threshold})
    r = recommend(study)
    assert r.flat and r.median_value == pytest.approx(0.1684)
    assert r.value_spread == pytest.approx((0.1684 - 0.1673) / 0.1673)
    assert "note: the best trial is within 2% of the median one (val/loss 0.1673 vs 0.1684)" in r.describe()
    # A lone best among equals far from it: more trials alike would not bound it, so no advice to add them.
    apart = _study(tmp_path, "apart")
    for threshold, value in ((0.01, 0.1673), (0.5, 0.1681), (5.0, 0.1683), (60.0, 0.1685)):
        _add(apart, value, {"clip.threshold": threshold})
    alone = recommend(apart)
    assert alone.flat and alone.interval == (0.01, 0.01)
    assert "uncertainty: not bounded: the sweep measured no difference to bound 0.01 by" in alone.describe()
    assert "resume the study" not in alone.describe()
    assert r.to_dict()["flat"] is True and r.to_dict()["median_value"] == pytest.approx(0.1684)
    # Trials that learned make the difference measurable: no note.
    for threshold in (0.15, 0.25):
        _add(study, 0.002, {"clip.threshold": threshold})
    learned = recommend(study)
    assert not learned.flat and "note:" not in learned.describe()
    # The pruner's survivors alike: the trials it stopped for trailing are the difference measured.
    survivors = _study(tmp_path, "survivors")
    for threshold, value in ((0.05, 0.0020), (0.1, 0.0020), (0.2, 0.00202)):
        _add(survivors, value, {"clip.threshold": threshold})
    for threshold in (3.0, 10.0, 30.0):
        _add(survivors, None, {"clip.threshold": threshold}, state=TrialState.PRUNED, reached=400)
    assert recommend(survivors).median_value is None and not recommend(survivors).flat
    _add(survivors, 0.0020, {"clip.threshold": 0.15})  # four alike of seven: the median is one of them again
    assert recommend(survivors).flat
    # A single completed trial has nothing to be compared with.
    lone = _study(tmp_path, "lone")
    _add(lone, 1.08, {"clip.threshold": 0.3})
    assert recommend(lone).median_value is None and not recommend(lone).flat


def test_recommend_says_when_no_clipping_did_as_well_as_the_best(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _add(study, 0.0100, {"clip": "norm", "clip.threshold": 0.3})
    _add(study, 0.0500, {"clip": "norm", "clip.threshold": 30.0})
    _add(study, 0.0800, {"clip": "norm", "clip.threshold": 10.0})
    _add(study, 0.0101, {"clip": "none"}, method="none")
    r = recommend(study)
    assert r.clip["threshold"] == 0.3 and not r.flat and r.unclipped.number == 3 and not r.clipping_matters
    assert "note: clip=none (trial 3) scored val/loss=0.0101, within 2% of the best" in r.describe()
    _add(study, 0.0200, {"clip": "none"}, method="none")
    assert recommend(study).unclipped.number == 3  # the best of the unclipped trials
    worse = _study(tmp_path, "worse")
    _add(worse, 0.0100, {"clip": "norm", "clip.threshold": 0.3})
    _add(worse, 0.0150, {"clip": "none"}, method="none")
    assert recommend(worse).clipping_matters and "clip=none" not in recommend(worse).describe()


def test_recommend_leaves_out_diverged_pruned_and_other_methods(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _add(study, 0.01, {"clip": "norm", "clip.threshold": 0.3})
    _add(study, 0.001, {"clip": "norm", "clip.threshold": 0.5}, status="diverged")  # best value, not a result
    _add(study, None, {"clip": "norm", "clip.threshold": 0.4}, state=TrialState.PRUNED)
    _add(study, 0.02, {"clip": "none"}, method="none")
    r = recommend(study)
    assert r.best.number == 0 and r.trial.number == 0 and r.trials == [0]
    assert r.clip == {"method": "norm", "threshold": 0.3, "norm_type": 2.0}


def test_recommend_fixed_percentile_reads_the_good_trials_norms_and_flags_an_extrapolation(tmp_path: Path) -> None:
    study = _study(tmp_path)
    norms = [_lognormal(i) for i in range(3)]
    norms[1][500:520] = np.nan
    for i, threshold in enumerate((0.25, 0.3, 0.4)):
        _add(study, 0.01 * (1 + 0.01 * i), {"clip.threshold": threshold}, norms[i])
    _add(study, BASELINE, {"clip.threshold": 50.0})
    r = recommend(study, RecommendSettings(percentile=90))
    raw = np.concatenate([_steady(n) for n in norms])
    assert r.trials == [0, 1, 2] and r.histogram.nonfinite == 20
    assert r.threshold == pytest.approx(np.percentile(raw, 90), rel=r.histogram.relative_error + 1e-3)
    assert r.extrapolated and r.trial is None and "validate it" in r.rule  # p90 is far above 0.25..0.4
    inside = recommend(study, RecommendSettings(percentile=float(100 * np.mean(raw <= 0.3))))
    assert not inside.extrapolated and "inside their range" in inside.describe()


def test_recommend_refuses_a_study_without_usable_trials(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _add(study, None, {"clip.threshold": 1.0}, state=TrialState.PRUNED)
    with pytest.raises(ValueError, match="no completed trial with a recorded config"):
        recommend(study)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"tolerance": 1.0}, "tolerance"), ({"bandwidth": 0}, "bandwidth"), ({"transient": 1.0}, "transient"),
     ({"percentile": 0}, "percentile")],
)  # fmt: skip
def test_recommend_settings_reject_bad_values(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"recommend\.{key}="):
        RecommendSettings(**options)


def test_recommend_on_a_real_sweep_matches_numpy_on_the_logged_steps(tmp_path: Path) -> None:
    run_sweep(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=real", "train.steps=40")
    study = load_study(tmp_path, "real")
    recommendation = recommend(study, RecommendSettings(tolerance=0.999, transient=0.3, percentile=75))
    client, _ = mlflow_runs(tmp_path)
    raw = []
    for number in recommendation.trials:
        run_id = study.trials[number].user_attrs["mlflow_run_id"]
        text = Path(client.download_artifacts(run_id, "telemetry/steps.csv", str(tmp_path))).read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        raw += [float(r["grad/norm"]) for r in rows if int(r["step"]) >= 12 and int(r["finite"])]
    assert recommendation.trials and recommendation.steps == len(raw) == 28 * len(recommendation.trials)
    expected = np.percentile(raw, 75)
    assert math.isclose(recommendation.threshold, expected, rel_tol=recommendation.histogram.relative_error + 1e-3)
