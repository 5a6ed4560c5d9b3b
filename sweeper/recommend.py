"""The recommended clip config: a robust choice among the sweep's own good trials.

Why not a percentile of pooled norms (the first rule): the trials ran at different thresholds and
learning rates, a solved RNN's norms span four decades, and the clip fraction that maps a threshold
to a percentile moves with every draw of the sampler; the same command recommended 0.015 once and
11.6 the next time. What the sweep measured directly is the objective as a function of the searched
parameters, so the rule works on that surface:

1. **Good trials**: completed, finished trials of the best trial's clip method whose objective is
   within ``tolerance`` of the best, measured as a fraction of the gap between the best and the
   worst completed trial (on a log scale when the values span a decade or more: losses do).
2. **Anchor**: each good trial is scored by a kernel average (width ``bandwidth``, in the searched
   space normalised to [0, 1] per parameter, log parameters in log space) of its neighbours'
   quality, diverged trials counting as worst and pruned ones as worst with the weight of the
   share of their steps they trained (a run pruned early says little). The anchor is the
   best-scored good trial: one lucky trial in a bad neighbourhood loses to a good trial among good
   ones. While any good trial clipped, trials that never clipped (in their steady state) neither
   anchor nor are chosen: they trained as if unclipped, so their result says their seed did not
   blow up, not that their threshold protects (on fresh seeds such a "flat never-clipping
   plateau" did 1.5x worse).
3. **The best trial, unless it was lucky**: when the best trial's own neighbourhood scores within
   ``tolerance`` of the anchor's, the best trial is the recommendation (the measured optimum,
   backed by its neighbours). Otherwise it was a lucky trial among worse neighbours, and the
   recommendation is the good trial nearest the quality- and kernel-weighted centre of the good
   trials around the anchor. Either way the recommended config was itself trained and scored, lies
   inside what good trials support by construction, and is exported and reproduced exactly like
   any trial. Measured on 24 12-trial benchmark sweeps (6 settings x 4 sampler seeds, each
   recommendation retrained on 3 fresh seeds): within 2% of the best trial's config on 23 of 24,
   and better than it on average (0.94x); moving to the centre whenever the centre differed did
   worse (19 of 24, up to 1.9x), and so did choosing never-clipping trials (18 of 24, up to 3.8x).
   On 12 20-trial sweeps (6 x 2), with pruned trials weighed by the steps they trained: 11 of 12.

The uncertainty is the interval of good thresholds at the recommended setting of the other
parameters (within two bandwidths of it). The norm percentiles are the explanation: where the
recommended threshold sits in the steady-state norms of the good trials near it, and how often it
clipped. A fixed ``percentile`` (Pascanu et al.'s norm-statistics rule) instead reads the threshold
off those norms; when that leaves the good range, the recommendation says so and is marked as an
extrapolation, which the sweep's export only takes once validation has backed it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from clipsweep.clipping import ClipMethod, clipper_class
from clipsweep.errors import ConfigError
from clipsweep.histogram import NormHistogram
from clipsweep.names import STATUS_ATTR
from clipsweep.recommendation import (
    Recommendation,
    TrialNorms,
    compact,
    global_threshold,
    percentile_of,
    spans_a_decade,
    trial_norms,
)
from clipsweep.sweep_config import RecommendConf

_THRESHOLD = "clip.threshold"
_NEIGHBOURHOOD = 2.0
"""Good trials within this many bandwidths of the anchor form the centre and the interval."""


@dataclass(frozen=True)
class RecommendSettings:
    """How the recommendation is derived; the CLI flags and ``hydra.sweeper.recommend`` feed it."""

    tolerance: float = RecommendConf.tolerance
    """Good trials: within this fraction of the best-to-worst gap of the completed trials."""
    bandwidth: float = RecommendConf.bandwidth
    """Kernel width in the normalised search space (0.15 of a 3-decade log range = 0.45 decades)."""
    transient: float = RecommendConf.transient
    """Fraction of each trial's planned steps dropped from the start of its norm statistics."""
    percentile: float | None = RecommendConf.percentile
    """None: the robust trial; a number: that percentile of the good trials' norms as the threshold."""

    def __post_init__(self) -> None:
        checks = (
            ("tolerance", self.tolerance, 0.0 <= float(self.tolerance) < 1.0, "a fraction in [0, 1)"),
            ("bandwidth", self.bandwidth, float(self.bandwidth) > 0.0, "a width > 0 (normalised search space)"),
            ("transient", self.transient, 0.0 <= float(self.transient) < 1.0, "a fraction in [0, 1)"),
            (
                "percentile",
                self.percentile,
                self.percentile is None or 0.0 < float(self.percentile) <= 100.0,
                "a percentile in (0, 100], or null",
            ),
        )
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"recommend.{key}", value, allowed)

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> RecommendSettings:
        options = dict(options or {})
        options.pop("validate", None)
        known = {"tolerance", "bandwidth", "transient", "percentile"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"recommend.{unknown[0]}", options[unknown[0]], ", ".join([*sorted(known), "validate"]))
        return cls(**options)


class _Space:
    """The numeric searched parameters, normalised to [0, 1] (log parameters in log space)."""

    def __init__(self, distributions: Mapping[str, BaseDistribution]) -> None:
        self.dims = {
            k: d
            for k, d in distributions.items()
            if isinstance(d, FloatDistribution | IntDistribution) and d.high > d.low
        }

    def point(self, params: Mapping[str, Any]) -> np.ndarray | None:
        if any(k not in params for k in self.dims):
            return None
        return np.array([self._unit(d, float(params[k])) for k, d in self.dims.items()])

    def value(self, key: str, unit: float) -> float:
        d = self.dims[key]
        low, high = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
        raw = low + unit * (high - low)
        return math.exp(raw) if d.log else raw

    @staticmethod
    def _unit(d: FloatDistribution | IntDistribution, x: float) -> float:
        if d.log:
            return (math.log(x) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
        return (x - d.low) / (d.high - d.low)


def _regret(values: np.ndarray, direction: str) -> np.ndarray:
    """0 for the best, 1 for the worst completed value; log scale when they span a decade or more."""
    loss = values if direction == "minimize" else -values
    if direction == "minimize" and spans_a_decade(values.tolist()):
        loss = np.log(values)  # losses: 1e-4 vs 2e-4 matters as much as 0.1 vs 0.2 (not so for accuracies)
    gap = loss.max() - loss.min()
    return (loss - loss.min()) / gap if gap > 0 else np.zeros_like(loss)


def recommend(
    study: optuna.Study, settings: RecommendSettings | None = None, objective: str = "val/loss"
) -> Recommendation:
    """Derive the recommendation from the study's stored trials; ValueError when it has nothing to rest on."""
    settings = settings or RecommendSettings()
    if len(study.directions) != 1:
        raise ValueError(f"study {study.study_name!r} is multi-objective: pick a solution, no single recommendation")
    direction = study.directions[0].name.lower()
    trials = study.get_trials(deepcopy=False)
    candidates = [n for t in trials if (n := trial_norms(t, settings.transient)) is not None]
    if not candidates:
        raise ValueError(
            f"study {study.study_name!r} has no completed trial with a recorded config "
            "(trials from clipsweep sweep record it; diverged and pruned trials are left out)"
        )
    regret = _regret(np.array([c.value for c in candidates]), direction)
    best = candidates[int(np.argmin(regret))]
    space = _Space(next(t.distributions for t in trials if t.number == best.number))
    located = [
        (c, r, p)
        for c, r in zip(candidates, regret)
        if c.method is best.method and (p := space.point(c.params)) is not None
    ]
    # Pruned and diverged trials of the same method are evidence too: of a bad neighbourhood.
    steps = int(best.config.get("train", {}).get("steps", 0))
    failed = [
        (p, _evidence(t, steps))
        for t in trials
        if (t.state == TrialState.PRUNED or t.user_attrs.get(STATUS_ATTR, "finished") != "finished")
        and t.params.get("clip", best.method.value) == best.method.value
        and (p := space.point(t.params)) is not None
    ]
    where = (study.study_name, objective, direction, settings, _measured(trials, candidates, direction))
    if not space.dims:  # nothing numeric searched: the best trial is the only evidence
        return _recommendation(
            *where, best, best, [best], None, "no numeric parameter searched for this method: the best trial"
        )
    chosen, near, interval, rule = _robust_trial(space, located, failed, settings)
    return _recommendation(*where, best, chosen, near, interval, rule)


def _measured(
    trials: Sequence[optuna.trial.FrozenTrial], candidates: Sequence[TrialNorms], direction: str
) -> tuple[float | None, TrialNorms | None]:
    """(the median outcome of the sweep's trials, the best completed trial without clipping).

    Pruned and diverged trials count as worse than every completed one: the pruner stopped them for
    trailing, so a sweep whose completed trials are its few survivors did measure a difference. The
    median is None with a single trial, or when such trials are the majority (not a sweep of equals).
    """
    worst = math.inf if direction == "minimize" else -math.inf
    stopped = sum(
        1
        for t in trials
        if t.state == TrialState.PRUNED
        or (t.state == TrialState.COMPLETE and t.user_attrs.get(STATUS_ATTR, "finished") != "finished")
    )
    outcomes = [c.value for c in candidates] + [worst] * stopped
    median = float(np.median(outcomes)) if len(outcomes) > 1 else None
    unclipped = [c for c in candidates if c.method is ClipMethod.none]
    plain = min(unclipped, key=lambda c: c.value if direction == "minimize" else -c.value) if unclipped else None
    return (median if median is not None and math.isfinite(median) else None), plain


def _evidence(trial: optuna.trial.FrozenTrial, steps: int) -> float:
    """How much a failed trial says about its neighbourhood: all of it for a run that diverged, the
    share of its steps it trained for a pruned one. A run pruned at a tenth of its steps was stopped
    while most runs had not yet separated (on the adding task all sit at chance until some learn);
    counted as a finished failure, such runs made the anchor follow the pruner's early coin flips
    (adding-LSTM: two sampler seeds recommended 0.35 and 0.036; weighted, 0.35 and 0.18)."""
    if trial.state != TrialState.PRUNED or not trial.intermediate_values or steps <= 0:
        return 1.0
    return min(1.0, max(trial.intermediate_values) / steps)


def _robust_trial(
    space: _Space,
    located: Sequence[tuple[TrialNorms, float, np.ndarray]],
    failed: Sequence[tuple[np.ndarray, float]],
    settings: RecommendSettings,
) -> tuple[TrialNorms, list[TrialNorms], tuple[float, float] | None, str]:
    """(chosen trial, good trials near it, good thresholds there, the rule in words): steps 2 and 3."""
    h, tol = settings.bandwidth, settings.tolerance
    trials = [t for t, _, _ in located]
    regret = np.array([r for _, r, _ in located])
    points = np.array([p for _, _, p in located])
    everyone = np.array([*points, *(p for p, _ in failed)])
    quality = np.concatenate([1.0 - regret, np.zeros(len(failed))])
    evidence = np.concatenate([np.ones(len(points)), [w for _, w in failed]])

    def kernel(at: np.ndarray) -> np.ndarray:
        """Each trial's weight around ``at``: its kernel weight times the evidence it carries."""
        return evidence * np.exp(-((everyone - at) ** 2).sum(axis=1) / (2 * h * h))

    scores = np.array([float(kernel(p) @ quality / kernel(p).sum()) for p in points])
    # A trial that never clipped trained as if unclipped: its result says that this seed did not blow
    # up, not that its threshold is good. While a good trial clipped, only clipping trials anchor and
    # are chosen (never-clipping ones stay evidence about their neighbours).
    clipped = np.array([t.clipped > 0 for t in trials])
    eligible = clipped if (clipped & (regret <= tol)).any() else np.ones(len(trials), bool)
    anchor = int(np.argmax(np.where(eligible, scores, -np.inf)))
    best = int(np.argmin(np.where(eligible, regret, np.inf)))

    def neighbourhood(k: int) -> tuple[np.ndarray, np.ndarray]:
        """The good trials around trial k (within tolerance of the best there), and their kernel weights."""
        weights = kernel(points[k])[: len(points)]
        close = weights >= math.exp(-(_NEIGHBOURHOOD**2) / 2)
        local_best = regret[close & eligible].min()
        good = np.flatnonzero(close & (regret <= local_best + tol))
        return good, weights[good] * np.exp(-(regret[good] - local_best) / max(tol, 1e-9))

    never = "" if eligible.all() else "; trials that never clipped left out: a good trial clipped"
    if scores[best] >= scores[anchor] - tol:
        # The best trial's neighbourhood backs it (its kernel-smoothed quality is within tolerance of
        # the best neighbourhood's): the measured optimum stands.
        good, _ = neighbourhood(best)
        which = "the best trial" if regret[best] == regret.min() else "the best trial that clipped"
        rule = (
            f"{which}: its neighbourhood scores {scores[best]:.2f}, within {tol:.0%} of the best "
            f"neighbourhood's {scores[anchor]:.2f} (kernel width {h:g}){never}"
        )
        return trials[best], [trials[k] for k in good], _interval(space, trials, points, good, best, h), rule
    # The best trial was lucky among worse neighbours: the centre of the best neighbourhood instead.
    good, w = neighbourhood(anchor)
    centre = (w[:, None] * points[good]).sum(axis=0) / w.sum()
    pick = good[eligible[good]]
    chosen = int(pick[np.argmin(((points[pick] - centre) ** 2).sum(axis=1))])
    centre_text = ", ".join(f"{key}={compact(space.value(key, u))}" for key, u in zip(space.dims, centre))
    rule = (
        f"the good trial nearest the weighted centre ({centre_text}) of the {len(good)} good trials around trial "
        f"{trials[anchor].number}, the trial with the best neighbourhood ({scores[anchor]:.2f}); the best trial's "
        f"scores {scores[best]:.2f}, more than {tol:.0%} below: a lucky trial among worse neighbours (good: within "
        f"{tol:.0%} of the best-to-worst gap of the best there; kernel width {h:g}){never}"
    )
    return trials[chosen], [trials[k] for k in good], _interval(space, trials, points, good, chosen, h), rule


def _interval(
    space: _Space, trials: Sequence[TrialNorms], points: np.ndarray, good: np.ndarray, chosen: int, h: float
) -> tuple[float, float] | None:
    """Good thresholds whose other searched parameters lie within two bandwidths of the chosen trial's."""
    threshold = global_threshold(trials[chosen].clip)
    if threshold is None or _THRESHOLD not in space.dims:
        return None if threshold is None else (threshold, threshold)
    others = np.arange(len(space.dims)) != list(space.dims).index(_THRESHOLD)
    values = [
        float(trials[k].params[_THRESHOLD])
        for k in good
        if (np.abs(points[k] - points[chosen])[others] <= _NEIGHBOURHOOD * h).all()
    ]
    return (min(values), max(values))


def _recommendation(
    study: str,
    objective: str,
    direction: str,
    settings: RecommendSettings,
    measured: tuple[float | None, TrialNorms | None],
    best: TrialNorms,
    chosen: TrialNorms,
    near: Sequence[TrialNorms],
    interval: tuple[float, float] | None,
    rule: str,
) -> Recommendation:
    """The chosen trial's config, or with a fixed ``percentile`` the threshold read off the good trials' norms.
    ``measured``: the sweep's median outcome and its best completed trial without clipping, which say
    whether the sweep measured a difference at all."""
    histogram = NormHistogram()
    for t in near:
        histogram.merge(t.histogram)
    clip, params, trial, extrapolated = dict(chosen.clip), dict(chosen.params), chosen, False
    if settings.percentile is not None and clipper_class(best.method).bounds_global_norm and histogram.count:
        value = float(f"{histogram.percentile(float(settings.percentile)):.4g}")
        clip = {"method": ClipMethod.norm.value, "threshold": value, "norm_type": float(clip.get("norm_type", 2.0))}
        params[_THRESHOLD] = value
        extrapolated = interval is None or not interval[0] <= value <= interval[1]
        trial = chosen if value == global_threshold(chosen.clip) else None
        rule = f"p{float(settings.percentile):g} of the steady-state norms of the good trials near {chosen.number}"
        if extrapolated:
            rule += ": outside the thresholds the good trials support, so validate it before use"
    threshold = global_threshold(clip)
    return Recommendation(
        study=study,
        objective=objective,
        direction=direction,
        clip=clip,
        params=params,
        trial=trial,
        best=best,
        good=list(near),
        histogram=histogram,
        threshold=threshold,
        interval=interval,
        percentile=math.nan if threshold is None else percentile_of(histogram, threshold),
        clip_fraction=math.nan if threshold is None or not histogram.count else histogram.fraction_above(threshold),
        rule=rule,
        extrapolated=extrapolated,
        median_value=measured[0],
        unclipped=measured[1],
    )
