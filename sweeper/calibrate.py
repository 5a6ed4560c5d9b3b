"""Calibration: one pilot run that yields a norm-clipping threshold, for a fraction of a sweep.

The pilot trains the configured model and task at a stable learning rate (``lr_scale`` times the
configured one) with only a safety cap, then recommends the ``percentile``-th of its steady-state
pre-clip norms for training at the configured rate. Why not an unclipped pilot at the configured
rate: where clipping matters that run explodes or, worse, sits stuck at chance with huge norms and no
NaN to warn anyone, and its percentiles mean nothing. Pascanu et al. derive the threshold from the
norms of stable updates in the same way; the bound is what lets the higher rate train.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeper.errors import ConfigError
from sweeper.telemetry import NormHistogram
from sweeper.tracking import Tracker
from sweeper.training import RunResult, build, train


@dataclass(frozen=True)
class CalibrateSettings:
    lr_scale: float = 0.3
    """The pilot's learning rate as a fraction of the configured ``optim.lr``."""
    percentile: float = 90.0
    """Percentile of the pilot's steady-state norms that becomes the threshold."""
    cap: float = 10.0
    """Safety norm cap during the pilot (far above typical norms: it only stops a blow-up)."""
    transient: float = 0.1
    steps: int | None = None
    """Pilot steps; None: half of ``train.steps`` (at least 10): the norms settle long before a run ends."""

    def __post_init__(self) -> None:
        checks = (
            ("--lr-scale", self.lr_scale, 0 < self.lr_scale <= 1, "a fraction in (0, 1]"),
            ("--percentile", self.percentile, 0 < self.percentile <= 100, "a percentile in (0, 100]"),
            ("--cap", self.cap, self.cap > 0, "a norm > 0"),
            ("--transient", self.transient, 0 <= self.transient < 1, "a fraction in [0, 1)"),
            ("--steps", self.steps, self.steps is None or self.steps >= 10, "an integer >= 10"),
        )
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(key, value, allowed)


@dataclass
class Calibration:
    threshold: float
    percentile: float
    histogram: NormHistogram
    lr: float
    pilot_lr: float
    result: RunResult
    examples: int
    seconds: float

    @property
    def clip(self) -> dict[str, Any]:
        return {"method": "norm", "threshold": self.threshold, "norm_type": 2.0}

    def describe(self, sweep_steps: int) -> str:
        share = self.result.steps / sweep_steps if sweep_steps else float("nan")
        return "\n".join(
            [
                f"calibrated: clip=norm clip.threshold={self.threshold:.4g} for optim.lr={self.lr:.4g}",
                f"  = p{self.percentile:g} of {self.histogram.count} steady-state pre-clip norms of a pilot at "
                f"lr {self.pilot_lr:.4g} ({self.histogram.nonfinite} non-finite steps excluded)",
                f"  pilot: {self.result.steps} steps, {self.examples} examples, {self.seconds:.1f} s; "
                f"{share:.1%} of the steps of a sweep with {sweep_steps} trial-steps; "
                f"pilot {', '.join(f'{k} {v:.4g}' for k, v in self.result.val.items())}",
                f"  train with it: clipsweep run clip=norm clip.threshold={self.threshold:.4g}",
            ]
        )

    def metrics(self) -> dict[str, float]:
        return {
            "calibrate/threshold": self.threshold,
            "calibrate/steps": float(self.result.steps),
            "calibrate/examples": float(self.examples),
            "calibrate/seconds": self.seconds,
        }


def pilot_config(config: DictConfig | Mapping[str, Any], settings: CalibrateSettings) -> DictConfig:
    resolved = copy.deepcopy(
        OmegaConf.to_container(config, resolve=True, enum_to_str=True) if isinstance(config, DictConfig) else config
    )
    resolved["clip"] = {"method": "norm", "threshold": settings.cap, "norm_type": 2.0}
    resolved["optim"]["lr"] = float(resolved["optim"]["lr"]) * settings.lr_scale
    steps = settings.steps if settings.steps is not None else max(10, int(resolved["train"]["steps"]) // 2)
    resolved["train"]["steps"] = steps
    resolved["train"]["eval_every"] = min(int(resolved["train"]["eval_every"]), steps)
    return OmegaConf.create(resolved)


def calibrate(config: DictConfig, settings: CalibrateSettings, tracker: Tracker) -> Calibration:
    """Run the pilot and derive the threshold; ValueError when the pilot gives nothing to read."""
    pilot = pilot_config(config, settings)
    started = time.perf_counter()
    result = train(build(pilot), tracker, run_name="calibrate", tags={"clipsweep.role": "calibrate"})
    seconds = time.perf_counter() - started
    histogram, _ = result.summary.segments.steady(settings.transient)
    if result.diverged or histogram.count == 0:
        raise ValueError(
            f"the pilot at lr {pilot.optim.lr:.4g} diverged: its norms mean nothing; lower --lr-scale "
            f"(now {settings.lr_scale:g})"
        )
    threshold = float(f"{histogram.percentile(settings.percentile):.4g}")
    examples = result.steps * int(pilot.train.batch_size) * int(pilot.train.accumulate)
    calibration = Calibration(
        threshold,
        settings.percentile,
        histogram,
        float(config.optim.lr),
        float(pilot.optim.lr),
        result,
        examples,
        seconds,
    )
    return calibration
