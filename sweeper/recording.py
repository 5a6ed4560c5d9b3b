"""One run's life around its optimizer steps: the tracking run, telemetry windows, evaluations, the
pruning question, and how the run ends.

Kept apart from the steps themselves so that a lone run (``training.train``) and a member of a batch
of runs trained as one model (``batching.train_batch``) end up with the same MLflow run, the same
metrics and the same ``RunResult``: only who computes the step differs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from clipsweep.config import NonFinite
from clipsweep.names import CLIP_METHOD_TAG, DEVICE_TAG, STATUS_TAG, STEPS_DONE_TAG
from clipsweep.plots import norm_histogram_png
from clipsweep.progress import RunProgress
from clipsweep.telemetry import RunSummary, Telemetry, Window, steps_csv
from clipsweep.tracker import Tracker, flatten, masked

RUN_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "diverged": "FAILED"}
"""MLflow run status per outcome, so the UI tells them apart at a glance: a run the pruner stopped
is KILLED, a diverged one FAILED (``clipsweep.status`` says which), a completed one FINISHED."""

EvalCallback = Callable[[int, Mapping[str, float]], bool]
"""Called after each evaluation with (step, metrics); returning True stops the run (pruning)."""


@dataclass
class RunResult:
    """What a run produced; ``status`` is finished, diverged or stopped (by the eval callback)."""

    status: str
    steps: int
    train_loss: float
    val: dict[str, float]
    summary: RunSummary
    tracking: str

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


class RunRecorder:
    """Everything of one run but its steps: ``start``, then ``after_step`` after each step until it
    returns True (or the steps run out), then ``finish``; ``abort`` on an exception instead.

    ``tags`` and ``run_name`` add to the tracking run (a sweep names its trials' runs and nests them
    under its parent run); ``run_name`` falls back to ``tracking.run_name``. ``on_start`` receives the
    tracking run id as soon as the run exists, so a crash later can still be traced. ``progress``
    replaces the run's own bar or lines (a batch reports its runs together).
    """

    def __init__(
        self,
        config: DictConfig,
        named_parameters: Sequence[tuple[str, Tensor]],
        device: torch.device,
        tracker: Tracker,
        on_eval: EvalCallback | None = None,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
        on_start: Callable[[str | None], None] | None = None,
        progress: RunProgress | None = None,
    ) -> None:
        self.config = config
        self.steps, self.eval_every = int(config.train.steps), int(config.train.eval_every)
        self.fail_on_nonfinite = NonFinite(config.train.nonfinite) is NonFinite.fail
        self.telemetry = Telemetry(named_parameters, int(config.tracking.log_every), device, total_steps=self.steps)
        self.tracker, self.on_eval, self.on_start = tracker, on_eval, on_start
        self.tags, self.device = dict(tags or {}), device
        self.run_name = run_name or config.tracking.run_name
        self.progress = progress or RunProgress(self.steps, run_name or str(config.tracking.run_name or "run"))
        self.status, self.done, self.train_loss, self.val = "finished", 0, math.nan, {}
        self.norm, self.last_threshold = math.nan, math.nan
        self.windows: list[Window] = []

    def start(self) -> None:
        resolved = OmegaConf.to_container(self.config, resolve=True, enum_to_str=True)
        self.tracker.start_run(
            self.run_name,
            params=flatten(masked(resolved)),
            tags={CLIP_METHOD_TAG: str(resolved["clip"]["method"]), DEVICE_TAG: str(self.device), **self.tags},
        )
        if self.on_start is not None:
            self.on_start(self.tracker.run_id)
        self.tracker.log_text(OmegaConf.to_yaml(self.config), "config.yaml")

    def after_step(self, step: int, evaluate: Callable[[], dict[str, float]]) -> bool:
        """Read the telemetry when a window is full, evaluate when due; True when the run is over
        (its last step, divergence, or the eval callback's stop)."""
        self.done = step + 1
        last = self.done == self.steps
        if self.telemetry.full or last:
            window = self.telemetry.drain()
            self.windows.append(window)
            self.tracker.log_metrics(window.metrics())
            self._shown(window.values["train/loss"], window.values["grad/norm"], window.finite)
            self.progress.window(self.done, self.train_loss, self.norm)
            thresholds = window.values["grad/threshold"][window.finite]
            self.last_threshold = float(thresholds[-1]) if thresholds.size else self.last_threshold
            if not window.finite.any() or (self.fail_on_nonfinite and not window.finite.all()):
                self.status = "diverged"
                return True
        if self.done % self.eval_every == 0 or last:
            if (pending := self.telemetry.pending()) is not None:  # the window is not full yet
                self._shown(*pending)
            self.val = evaluate()
            self.progress.evaluated(self.done, self.train_loss, self.norm, self.val)
            self.tracker.log_metrics((k, v, self.done) for k, v in self.val.items())
            if not math.isfinite(self.val["val/loss"]):
                self.status = "diverged"
                return True
            if self.on_eval is not None and self.on_eval(self.done, self.val):
                self.status = "stopped"
                return True
        return last

    def _shown(self, loss: np.ndarray, norm: np.ndarray, finite: np.ndarray) -> None:
        """What the progress shows: the steps' mean finite train loss, their median finite norm."""
        self.train_loss = _mean_finite(loss)
        norms = norm[finite]
        self.norm = float(np.median(norms)) if norms.size else self.norm

    def wants_evaluation(self, step: int) -> bool:
        """Whether ``after_step(step)`` will evaluate, unless a diverged window ends the run first."""
        return (step + 1) % self.eval_every == 0 or step + 1 == self.steps

    def finish(self) -> RunResult:
        """The run's tail (the last window, steps.csv, the norm summary and histogram, the status
        tags), the tracking run ended with the outcome's status."""
        tracker, telemetry = self.tracker, self.telemetry
        try:
            window = telemetry.drain()  # rows recorded before an early break
            if window is not None:
                self.windows.append(window)
                tracker.log_metrics(window.metrics())
                if math.isnan(self.train_loss):  # stopped before its first full window
                    self.train_loss = _mean_finite(window.values["train/loss"])
            tracker.log_text(steps_csv(self.windows), "telemetry/steps.csv")
            summary_metrics = telemetry.summary.metrics()
            tracker.log_metrics((k, v, self.done) for k, v in summary_metrics.items() if math.isfinite(v))
            histogram = telemetry.summary.histogram
            tracker.log_text(json.dumps(histogram.to_dict(), indent=1), "telemetry/grad_norm_histogram.json")
            marks = {"threshold": self.last_threshold}
            tracker.log_figure(lambda: norm_histogram_png(histogram, marks), "telemetry/grad_norm_histogram.png")
            tracker.set_tags({STATUS_TAG: self.status, STEPS_DONE_TAG: str(self.done)})
        except BaseException as err:
            self.abort(err)
            raise
        self.progress.close()
        tracker.end_run(RUN_STATUS[self.status])
        return RunResult(self.status, self.done, self.train_loss, self.val, telemetry.summary, tracker.describe())

    def abort(self, err: BaseException) -> None:
        """End the tracking run after an exception: KILLED for an interrupt, FAILED otherwise."""
        self.progress.close()
        self.tracker.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
