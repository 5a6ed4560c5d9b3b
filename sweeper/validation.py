"""Validation: retrain the recommendation and the best trial's clip config on fresh seeds.

The best trial won on one seed among many tries, so its value is optimistic; retraining both
configs on the same K unseen seeds (base seed + 1..K) compares them on equal terms. Everything but
the clip config is the best trial's own stored config, learning rate included.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from clipsweep.names import ROLE_TAG, STUDY_TAG
from clipsweep.recommendation import Recommendation
from clipsweep.recording import RunResult
from clipsweep.tracking import make_tracker
from clipsweep.training import build, train


@dataclass
class Arm:
    """One clip config retrained on K seeds."""

    label: str
    config: dict[str, Any]
    values: list[float] = field(default_factory=list)

    @property
    def clip(self) -> dict[str, Any]:
        return dict(self.config.get("clip", {}))

    @property
    def finite(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finite) if self.finite else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.finite) if len(self.finite) > 1 else 0.0 if self.finite else math.nan

    def describe(self, objective: str) -> str:
        runs = ", ".join(f"{v:.4g}" for v in self.values)
        failed = len(self.values) - len(self.finite)
        extra = f"; {failed} diverged" if failed else ""
        spread = f"{self.mean:.5g} ± {self.std:.2g}"
        return f"{self.label:<11} {objective} mean {spread} over {len(self.values)} seeds ({runs}){extra}"


@dataclass
class Validation:
    objective: str
    direction: str
    seeds: list[int]
    recommended: Arm
    best: Arm

    @property
    def one_config(self) -> bool:
        """The recommendation is the best trial's own config: one set of runs answered for both arms."""
        return self.recommended.config == self.best.config

    def recommended_wins(self) -> bool:
        """True when the recommendation is at least as good as the best trial's config on average."""
        if len(self.recommended.finite) < len(self.recommended.values):
            return False  # a diverged seed disqualifies it
        if not math.isfinite(self.best.mean):
            return math.isfinite(self.recommended.mean)
        if self.direction == "maximize":
            return self.recommended.mean >= self.best.mean
        return self.recommended.mean <= self.best.mean

    def metrics(self) -> list[tuple[str, float, int]]:
        rows = []
        for arm in (self.recommended, self.best):
            rows += [(f"validate/{arm.label}_mean", arm.mean, 0), (f"validate/{arm.label}_std", arm.std, 0)]
        return [(k, v, s) for k, v, s in rows if math.isfinite(v)]

    def describe(self) -> str:
        head = f"validation on seeds {self.seeds} (fresh: the sweep selected on another):"
        if self.one_config:
            same = "the recommendation is the best trial's config"
            return f"{head}\n  {self.recommended.describe(self.objective)}\n  {same}"
        verdict = "at least as good as" if self.recommended_wins() else "worse than"
        return "\n".join(
            [
                head,
                "  " + self.recommended.describe(self.objective),
                "  " + self.best.describe(self.objective),
                f"  the recommendation is {verdict} the best trial's config",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "direction": self.direction,
            "seeds": self.seeds,
            **{
                arm.label: {"config": arm.config, "values": arm.values, "mean": arm.mean, "std": arm.std}
                for arm in (self.recommended, self.best)
            },
            "recommended_wins": self.recommended_wins(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Validation:
        arms = [Arm(label, dict(data[label]["config"]), [float(v) for v in data[label]["values"]])
                for label in ("recommended", "best")]  # fmt: skip
        return cls(str(data["objective"]), str(data["direction"]), [int(s) for s in data["seeds"]], *arms)

    def covers(self, recommendation: Recommendation) -> bool:
        """Whether this validation compared exactly the configs of ``recommendation`` (so it can be reused)."""
        return (
            self.recommended.config == recommendation.config
            and self.best.config == recommendation.best.config
            and self.objective == recommendation.objective
        )


def retrain(
    config: Mapping[str, Any],
    clip: Mapping[str, Any] | None,
    seed: int,
    tracking: Mapping[str, Any],
    run_name: str,
    tags: Mapping[str, str],
) -> RunResult:
    """Train a stored (resolved) config with another seed (and clip config, unless None)."""
    resolved = copy.deepcopy(dict(config))
    if clip is not None:
        resolved["clip"] = dict(clip)
    resolved["train"] = {**resolved.get("train", {}), "seed": int(seed)}
    resolved["tracking"] = {**resolved.get("tracking", {}), **tracking}
    node = OmegaConf.create(resolved)
    tracker = make_tracker(str(node.tracking.uri), str(node.tracking.experiment), bool(node.tracking.enabled))
    result = train(build(node), tracker, tags=tags, run_name=run_name)
    tracker.flush()
    return result


def validate(
    recommendation: Recommendation,
    k: int,
    tracking: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> Validation:
    """Retrain the recommended and the best trial's config on seeds base+1..base+k."""
    if k < 1:
        raise ValueError(f"validate={k!r} must be >= 1 seeds")
    base = int(recommendation.best.config.get("train", {}).get("seed", 0))
    seeds = [base + i for i in range(1, k + 1)]
    arms = [Arm("recommended", recommendation.config), Arm("best", recommendation.best.config)]
    tags = {ROLE_TAG: "validate", STUDY_TAG: recommendation.study}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    # Mostly the recommendation is the best trial's own config: its runs answer for both arms (half
    # the cost; CPU training is deterministic, so a second run would repeat the first to the bit).
    same = recommendation.config == recommendation.best.config
    for arm in arms[:1] if same else arms:
        for seed in seeds:
            result = retrain(arm.config, None, seed, tracking, f"validate-{arm.label}-seed{seed}", tags)
            value = result.val.get(recommendation.objective, math.nan)
            arm.values.append(value if result.status == "finished" else math.nan)
    if same:
        arms[1].values = list(arms[0].values)
    return Validation(recommendation.objective, recommendation.direction, seeds, *arms)
