"""A recommended clip threshold from the gradient norms the best trials actually saw.

The rule, and why: a threshold only matters through how often it clips (``clip_grad_norm_`` is the
identity below it), so the best trials' clip fractions are what the sweep measured; their thresholds
are noisy samples of the sampler. The recommendation pools the steady-state pre-clip norms of the
``top_k`` best completed trials that used the best trial's method (their early transient dropped,
non-finite steps excluded by the histograms), takes the median of their clip fractions ``f`` and
recommends the ``100·(1-f)``-th percentile of the pooled norms: the threshold that would have clipped
as often as the best trials did, estimated from all of their steps instead of one trial's draw.
A fixed ``percentile`` replaces the matched one (Pascanu et al. take the average norm).

Diverged and pruned trials never enter: their norms (p90 ≈ 1e16 once a run explodes) say nothing
about a good threshold. The threshold goes with the best trial's learning rate, which is reported
with it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.clipping import ClipMethod
from sweeper.errors import ConfigError
from sweeper.study import STATUS_ATTR
from sweeper.telemetry import NormHistogram, NormSegments

NORMS_ATTR = "clipsweep.norms"
"""Trial user attribute: the job's norm spans (``NormSegments.to_dict``)."""
CONFIG_ATTR = "clipsweep.config"
"""Trial user attribute: the job's resolved config (model, task, clip, optim, train)."""
PARENT_RUN_ATTR = "clipsweep.parent_run_id"
"""Study user attribute: the MLflow parent run of the latest sweep invocation."""
TRACKING_URI_ATTR = "clipsweep.tracking_uri"
"""Study user attribute: where that parent run lives."""
CONCLUDED_ATTR = "clipsweep.concluded"
"""Study user attribute: how many completed trials the last end-of-sweep recommendation covered."""

# Methods whose own parameter is recommended (the median over the best trials), not a norm percentile.
_OWN_PARAMETER = {ClipMethod.value: "threshold", ClipMethod.zclip: "z_threshold", ClipMethod.agc: "clip_factor"}
_DEFAULT_CAP_PERCENTILE = 99.0
_SATURATED_PERCENTILE = 2.0
"""Below this matched percentile (the best trials clipped over 98% of steps) the rule falls back."""


@dataclass(frozen=True)
class RecommendSettings:
    """How the recommendation is derived; the CLI flags and ``hydra.sweeper.recommend`` feed it."""

    top_k: int = 3
    """Best completed trials whose norms are pooled."""
    transient: float = 0.1
    """Fraction of each trial's planned steps dropped from the start (rounded up to whole tenths)."""
    percentile: float | None = None
    """None: matched to the best trials' clip fraction; a number: that percentile of the pooled norms."""

    def __post_init__(self) -> None:
        if int(self.top_k) < 1:
            raise ConfigError("recommend.top_k", self.top_k, "an integer >= 1")
        if not 0.0 <= float(self.transient) < 1.0:
            raise ConfigError("recommend.transient", self.transient, "a fraction in [0, 1)")
        if self.percentile is not None and not 0.0 < float(self.percentile) <= 100.0:
            raise ConfigError("recommend.percentile", self.percentile, "a percentile in (0, 100], or null")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> RecommendSettings:
        options = dict(options or {})
        options.pop("validate", None)
        unknown = sorted(set(options) - {"top_k", "transient", "percentile"})
        if unknown:
            raise ConfigError(f"recommend.{unknown[0]}", options[unknown[0]], "top_k, transient, percentile, validate")
        return cls(**options)


@dataclass
class TrialNorms:
    """One completed trial as the recommendation sees it."""

    number: int
    value: float
    config: dict[str, Any]
    histogram: NormHistogram
    clipped: int

    @property
    def clip(self) -> dict[str, Any]:
        return dict(self.config.get("clip", {}))

    @property
    def method(self) -> ClipMethod:
        return ClipMethod(self.clip.get("method", "none"))

    @property
    def clip_fraction(self) -> float:
        return self.clipped / self.histogram.count if self.histogram.count else math.nan


@dataclass
class Recommendation:
    """The recommended clip config and the evidence it rests on."""

    study: str
    objective: str
    direction: str
    clip: dict[str, Any]
    threshold: float
    """Global-norm threshold: the recommended one, or for adaptive methods the fixed one it matches."""
    percentile: float
    """Where ``threshold`` sits in the pooled steady-state norm distribution."""
    clip_fraction: float
    """Share of the pooled steps above ``threshold``: how often it would have clipped."""
    rule: str
    best: TrialNorms
    pooled: list[TrialNorms]
    histogram: NormHistogram
    best_threshold: float | None
    """The best trial's own global-norm threshold (None for methods without one)."""
    best_percentile: float | None = None
    optim: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.histogram.count

    @property
    def trials(self) -> list[int]:
        return [t.number for t in self.pooled]

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "objective": self.objective,
            "direction": self.direction,
            "clip": dict(self.clip),
            "threshold": self.threshold,
            "percentile": self.percentile,
            "clip_fraction": self.clip_fraction,
            "rule": self.rule,
            "trials": self.trials,
            "steps": self.steps,
            "nonfinite_steps_excluded": self.histogram.nonfinite,
            "relative_error": self.histogram.relative_error,
            "best_trial": self.best.number,
            "best_value": self.best.value,
            "best_clip": self.best.clip,
            "best_threshold": self.best_threshold,
            "best_threshold_percentile": self.best_percentile,
            "optim": dict(self.optim),
        }

    def describe(self) -> str:
        """The recommendation and its evidence, as printed at the end of a sweep and by the CLI."""
        own = {k: v for k, v in self.clip.items() if k != "method"}
        settings = ", ".join(f"{k}={_short(v)}" for k, v in own.items())
        lr = self.optim.get("lr")
        lines = [
            f"recommended: clip={self.clip.get('method')} {settings}"
            + (
                f" (with optim.lr={_short(lr)}, the best trial's: a threshold goes with its learning rate)"
                if lr
                else ""
            ),
            f"  rule: {self.rule}",
            f"  threshold {self.threshold:.4g} = p{self.percentile:.1f} of {self.steps} steady-state steps "
            f"from trials {self.trials} (±{self.histogram.relative_error:.1%}); clips {self.clip_fraction:.1%} "
            f"of them; {self.histogram.nonfinite} non-finite steps excluded",
        ]
        if self.best_threshold is not None:
            where = f" (p{self.best_percentile:.1f} of the pooled norms)" if self.best_percentile is not None else ""
            ratio = self.threshold / self.best_threshold if self.best_threshold else math.nan
            lines.append(
                f"  best trial {self.best.number}: {self.objective}={self.best.value:.5g} at threshold "
                f"{self.best_threshold:.4g}{where}; recommendation = {ratio:.2f}x that"
            )
        else:
            lines.append(
                f"  best trial {self.best.number}: {self.objective}={self.best.value:.5g}, clip={self.best.clip}"
            )
        return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_norms(trial: FrozenTrial, transient: float) -> TrialNorms | None:
    """A completed trial with recorded norms, its transient dropped; None when it cannot be used."""
    if trial.state != TrialState.COMPLETE or NORMS_ATTR not in trial.user_attrs or trial.value is None:
        return None
    if trial.user_attrs.get(STATUS_ATTR, "finished") != "finished":
        return None  # diverged or stopped runs: their norms say nothing about a good threshold
    histogram, clipped = NormSegments.from_dict(trial.user_attrs[NORMS_ATTR]).steady(transient)
    if histogram.count == 0:
        return None
    return TrialNorms(trial.number, float(trial.value), dict(trial.user_attrs.get(CONFIG_ATTR, {})), histogram, clipped)


def global_threshold(clip: Mapping[str, Any]) -> float | None:
    """The fixed global-norm threshold of a clip config, if its method has one."""
    method = ClipMethod(clip.get("method", "none"))
    if method is ClipMethod.norm:
        return float(clip["threshold"])
    return None


def percentile_of(histogram: NormHistogram, value: float) -> float:
    """Inverse of ``percentile``: where ``value`` sits in the distribution (0..100)."""
    return 100.0 * (1.0 - histogram.fraction_above(value))


def recommend(
    study: optuna.Study, settings: RecommendSettings | None = None, objective: str = "val/loss"
) -> Recommendation:
    """Derive the recommendation from the study's stored trials; ValueError when it has nothing to rest on."""
    settings = settings or RecommendSettings()
    if len(study.directions) != 1:
        raise ValueError(f"study {study.study_name!r} is multi-objective: pick a solution, no single recommendation")
    direction = study.directions[0].name.lower()
    usable = [n for t in study.get_trials(deepcopy=False) if (n := trial_norms(t, settings.transient)) is not None]
    if not usable:
        raise ValueError(
            f"study {study.study_name!r} has no completed trial with recorded gradient norms "
            "(trials from clipsweep sweep record them; diverged and pruned trials are left out)"
        )
    usable.sort(key=lambda t: t.value, reverse=direction == "maximize")
    best = usable[0]
    same_method = [t for t in usable if t.method is best.method]
    pooled = same_method[: settings.top_k]
    histogram = NormHistogram()
    for t in pooled:
        histogram.merge(t.histogram)
    return _derive(study.study_name, objective, direction, best, pooled, histogram, settings)


def _derive(
    study: str,
    objective: str,
    direction: str,
    best: TrialNorms,
    pooled: Sequence[TrialNorms],
    histogram: NormHistogram,
    settings: RecommendSettings,
) -> Recommendation:
    method = best.method
    fractions = [t.clip_fraction for t in pooled if math.isfinite(t.clip_fraction)]
    fraction = statistics.median(fractions) if fractions else 0.0
    matched = 100.0 * (1.0 - fraction)
    if settings.percentile is not None:
        q, rule = float(settings.percentile), f"p{float(settings.percentile):g} of the pooled steady-state norms"
    elif method is ClipMethod.none:
        q = _DEFAULT_CAP_PERCENTILE
        rule = f"the best trials did not clip: a norm cap at p{q:g} of their norms, above typical steps"
    else:
        q = matched
        rule = (
            f"matched clip fraction: the median of the top {len(pooled)} trials' clip fractions "
            f"({fraction:.1%}) read off their pooled norms"
        )
    q = min(max(q, 0.0), 100.0)
    threshold = float(f"{histogram.percentile(q):.4g}")  # 4 digits: well inside the histogram's error
    clip = dict(best.clip)
    saturated = settings.percentile is None and method is ClipMethod.norm and q < _SATURATED_PERCENTILE
    if saturated:
        # Every step clipped: the thresholds sit below all the norms, where no percentile reaches
        # (the update is a normalised gradient of length lr x threshold). Their own values decide.
        thresholds = [float(t.clip["threshold"]) for t in pooled]
        threshold = float(f"{math.exp(statistics.median(math.log(v) for v in thresholds)):.4g}")
        q = percentile_of(histogram, threshold)
        rule = (
            f"the top {len(pooled)} trials clipped {fraction:.0%} of their steps, so their "
            "thresholds lie below the norms where no percentile reaches: the median of those thresholds"
        )
    if method in (ClipMethod.norm, ClipMethod.none):
        clip = {"method": ClipMethod.norm.value, "threshold": threshold, "norm_type": float(clip.get("norm_type", 2.0))}
    elif method is ClipMethod.percentile:
        clip["percentile"] = q  # AutoClip's own percentile, over its window: same clip fraction
    else:
        key = _OWN_PARAMETER[method]
        clip[key] = float(statistics.median(float(t.clip[key]) for t in pooled))
        rule = f"median {key} of the top {len(pooled)} trials (no norm-percentile mapping for {method.value})"
    best_threshold = global_threshold(best.clip)
    return Recommendation(
        study=study,
        objective=objective,
        direction=direction,
        clip=clip,
        threshold=threshold,
        percentile=q,
        clip_fraction=histogram.fraction_above(threshold),
        rule=rule,
        best=best,
        pooled=list(pooled),
        histogram=histogram,
        best_threshold=best_threshold,
        best_percentile=None if best_threshold is None else percentile_of(histogram, best_threshold),
        optim=dict(best.config.get("optim", {})),
    )
