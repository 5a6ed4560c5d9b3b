"""What a recommendation rests on and says: each usable trial with its steady-state norms
(``TrialNorms``), and the recommended clip config with its evidence, uncertainty and the words
that explain it (``Recommendation``). The rule that makes one is ``sweeper.recommend``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from clipsweep.clipping import ClipMethod, clipper_class
from clipsweep.histogram import NormHistogram
from clipsweep.names import CONFIG_ATTR, CONFIG_DIR_ATTR, FIXED_ATTR, NORMS_ATTR, STATUS_ATTR
from clipsweep.telemetry import NormSegments

FLAT = 0.02
"""The best trial within this fraction of the median trial, or of a trial without clipping: a sweep
that measured no difference (the issue's own bar for "as good as the best": 2%)."""


@dataclass
class TrialNorms:
    """One completed trial as the recommendation sees it."""

    number: int
    value: float
    config: dict[str, Any]
    histogram: NormHistogram
    clipped: int
    params: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    config_dir: str | None = None
    """The sweep's ``--config-dir``: the user's own groups the fixed overrides may name."""

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
    """The recommended clip config (and its co-searched parameters) with the evidence it rests on."""

    study: str
    objective: str
    direction: str
    clip: dict[str, Any]
    params: dict[str, Any]
    """Every searched parameter of the recommendation (``clip.*``, ``optim.lr``, ...)."""
    trial: TrialNorms | None
    """The good trial recommended, or None for an extrapolated (fixed-percentile) threshold."""
    best: TrialNorms
    good: list[TrialNorms]
    """Good trials near the anchor: the centre, the interval and the norm statistics come from them."""
    histogram: NormHistogram
    threshold: float | None
    """The recommended global-norm threshold (norm clipping), else None."""
    interval: tuple[float, float] | None
    """Good thresholds at the recommended setting of the other parameters: the uncertainty."""
    percentile: float
    """Where ``threshold`` sits in the good trials' steady-state norms (0..100; nan without one)."""
    clip_fraction: float
    """Share of those steps above ``threshold``: how often it would have clipped."""
    rule: str
    extrapolated: bool = False
    median_value: float | None = None
    """The median outcome of the sweep's trials, pruned and diverged ones counted as worse than any
    completed one (None with one trial, or when those are the majority)."""
    unclipped: TrialNorms | None = None
    """The best completed trial without clipping (``clip=none``), when the sweep searched the method."""

    def _gap_to_best(self, value: float) -> float:
        """How far ``value`` is from the best trial's, as a fraction of the best value."""
        return abs(value - self.best.value) / max(abs(self.best.value), 1e-12)

    @property
    def value_spread(self) -> float:
        """How far the best trial beat the median one, as a fraction of the best value (nan without a median):
        the median, not the worst, so one run that went badly does not make a sweep of equals look decisive."""
        return math.nan if self.median_value is None else self._gap_to_best(self.median_value)

    @property
    def clipping_matters(self) -> bool:
        """False when a trial without clipping came within ``FLAT`` of the best trial (which clipped)."""
        if self.unclipped is None or self.best.method is ClipMethod.none:
            return True
        return self._gap_to_best(self.unclipped.value) > FLAT

    @property
    def flat(self) -> bool:
        """The best trial within ``FLAT`` of the median one: the searched settings made no measurable
        difference, so the rule's choice among them is noise however it is made (a copy task that no
        trial learned in its steps, a model that trains alike at any threshold)."""
        return self.value_spread <= FLAT

    @property
    def steps(self) -> int:
        return self.histogram.count

    @property
    def trials(self) -> list[int]:
        return [t.number for t in self.good]

    @property
    def best_threshold(self) -> float | None:
        return global_threshold(self.best.clip)

    @property
    def best_percentile(self) -> float | None:
        threshold = self.best_threshold
        return None if threshold is None else percentile_of(self.histogram, threshold)

    @property
    def config(self) -> dict[str, Any]:
        """The full resolved config to train the recommendation with (validation, reproduction)."""
        base = self.trial or self.best
        return {**base.config, "clip": dict(self.clip)}

    @property
    def optim(self) -> dict[str, Any]:
        return dict(self.config.get("optim", {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "objective": self.objective,
            "direction": self.direction,
            "clip": dict(self.clip),
            "params": dict(self.params),
            "trial": None if self.trial is None else self.trial.number,
            "value": None if self.trial is None else self.trial.value,
            "threshold": self.threshold,
            "interval": None if self.interval is None else list(self.interval),
            "percentile": self.percentile,
            "clip_fraction": self.clip_fraction,
            "rule": self.rule,
            "extrapolated": self.extrapolated,
            "good_trials": self.trials,
            "steps": self.steps,
            "nonfinite_steps_excluded": self.histogram.nonfinite,
            "best_trial": self.best.number,
            "best_value": self.best.value,
            "best_clip": self.best.clip,
            "best_params": dict(self.best.params),
            "optim": self.optim,
            "median_value": self.median_value,
            "flat": self.flat,
            "unclipped_trial": None if self.unclipped is None else self.unclipped.number,
            "clipping_matters": self.clipping_matters,
        }

    def describe(self) -> str:
        """The recommendation and its evidence, as printed at the end of a sweep and by the CLI."""
        shown = {f"clip.{k}": v for k, v in self.clip.items() if k == "threshold"} | {
            k: v for k, v in self.params.items() if k != "clip"
        }
        settings = " ".join(f"{k}={compact(v)}" for k, v in shown.items())
        if self.extrapolated:
            where = "extrapolated: validate it"
        else:
            where = (
                f"trial {self.trial.number}" if self.trial else "read off the good trials' norms, inside their range"
            )
        value = "" if self.trial is None else f": {self.objective}={self.trial.value:.5g}"
        lines = [f"recommended: clip={self.clip.get('method')} {settings}".rstrip() + f" ({where}{value})"]
        if self.interval is not None:
            lo, hi = self.interval
            if lo < hi:
                text = f"thresholds {lo:.3g}..{hi:.3g} were within tolerance of the best there"
                text += f" ({len(self.good)} good trials)"
            elif self.flat:  # more trials alike would not bound it either
                text = f"not bounded: the sweep measured no difference to bound {lo:.3g} by (see the note)"
            else:
                text = (
                    f"not bounded: no other trial near {lo:.3g} came within tolerance of the best (a lone good trial; "
                    f"to bound it, resume the study with more trials: the same sweep with "
                    f"hydra.sweeper.study_name={self.study} and a larger hydra.sweeper.n_trials)"
                )
            lines.append(f"  uncertainty: {text}")
        lines.append(f"  rule: {self.rule}")
        if self.flat and self.median_value is not None:
            lines.append(
                f"  note: the best trial is within {FLAT:.0%} of the median one ({self.objective} "
                f"{self.best.value:.5g} vs {self.median_value:.5g}): the searched settings barely changed the "
                "outcome, so no setting here is measurably better than another; train longer (train.steps) or "
                "search a wider range before relying on this one"
            )
        if not self.clipping_matters and self.unclipped is not None:
            lines.append(
                f"  note: clip=none (trial {self.unclipped.number}) scored {self.objective}="
                f"{self.unclipped.value:.5g}, within {FLAT:.0%} of the best: in this sweep clipping made no "
                "measurable difference"
            )
        if self.threshold is not None and self.histogram.count:
            h = self.histogram
            lines.append(
                f"  norms of those trials (steady state, {h.count} steps, {h.nonfinite} non-finite excluded): "
                f"p50 {h.percentile(50):.3g}, p90 {h.percentile(90):.3g}, p99 {h.percentile(99):.3g}; "
                f"the threshold is p{self.percentile:.0f} and clips {self.clip_fraction:.0%} of steps"
            )
        lines.append(
            f"  best trial {self.best.number}: {self.objective}={self.best.value:.5g} "
            + " ".join(f"{k}={compact(v)}" for k, v in self.best.params.items())
        )
        return "\n".join(lines)


def spans_a_decade(values: Sequence[float]) -> bool:
    """Positive values whose largest is at least ten times the smallest: losses that are compared,
    and plotted, on a log scale (1e-4 vs 2e-4 matters as much as 0.1 vs 0.2)."""
    return len(values) > 0 and min(values) > 0 and max(values) >= 10 * min(values)


def compact(value: Any) -> str:
    """A number as the recommendation prints it (4 significant digits), anything else as is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _norms(trial: FrozenTrial, transient: float) -> tuple[NormHistogram, int]:
    if NORMS_ATTR not in trial.user_attrs:
        return NormHistogram(), 0
    return NormSegments.from_dict(trial.user_attrs[NORMS_ATTR]).steady(transient)


def trial_norms(trial: FrozenTrial, transient: float) -> TrialNorms | None:
    """A completed, finished trial with its steady-state norms; None when it cannot be a candidate."""
    if trial.state != TrialState.COMPLETE or trial.value is None or CONFIG_ATTR not in trial.user_attrs:
        return None
    if trial.user_attrs.get(STATUS_ATTR, "finished") != "finished":
        return None  # diverged or stopped runs: not a result
    histogram, clipped = _norms(trial, transient)
    return TrialNorms(
        trial.number,
        float(trial.value),
        dict(trial.user_attrs[CONFIG_ATTR]),
        histogram,
        clipped,
        dict(trial.params),
        list(trial.user_attrs.get(FIXED_ATTR, [])),
        trial.user_attrs.get(CONFIG_DIR_ATTR),
    )


def global_threshold(clip: Mapping[str, Any]) -> float | None:
    """The fixed global-norm threshold of a clip config, if its method has one."""
    return clipper_class(clip.get("method", "none")).global_threshold(clip)


def percentile_of(histogram: NormHistogram, value: float) -> float:
    """Inverse of ``percentile``: where ``value`` sits in the distribution (0..100)."""
    return 100.0 * (1.0 - histogram.fraction_above(value)) if histogram.count else math.nan
