"""One training run: build everything from the config (validating it), then train with clipping.

The step order follows nanoGPT: backward for every micro-batch → (AMP) unscale → measure & clip once
→ optimizer step → scaler update. Nothing in the step reads a device value on the host; the host
looks at the device only every ``tracking.log_every`` steps and at evaluations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import Tensor, nn

from clipsweep.clipping import Clipper, ClipStats, make_clipper
from clipsweep.config import NonFinite
from clipsweep.errors import ConfigError
from clipsweep.instantiation import instantiate_node
from clipsweep.interrupts import raise_if_requested
from clipsweep.names import CLIP_METHOD_TAG, DEVICE_TAG, STATUS_TAG, STEPS_DONE_TAG
from clipsweep.plots import norm_histogram_png
from clipsweep.progress import RunProgress
from clipsweep.tasks import Task, model_kwargs
from clipsweep.tasks import metrics as task_metrics
from clipsweep.telemetry import RunSummary, Telemetry, Window, steps_csv
from clipsweep.tracker import Tracker, flatten, masked

PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}

RUN_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "diverged": "FAILED"}
"""MLflow run status per outcome, so the UI tells them apart at a glance: a run the pruner stopped
is KILLED, a diverged one FAILED (``clipsweep.status`` says which), a completed one FINISHED."""

EvalCallback = Callable[[int, Mapping[str, float]], bool]
"""Called after each evaluation with (step, metrics); returning True stops the run (pruning)."""


def resolve_device(spec: str) -> torch.device:
    allowed = "auto, cpu, cuda or cuda:<index>"
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError("train.device", spec, allowed) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device", spec, f"{allowed}; CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("train.device", spec, f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type != "cpu":
        raise ConfigError("train.device", spec, allowed)
    return device


def bf16_supported(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 (CUDA before Ampere does not)."""
    return device.type == "cpu" or torch.cuda.is_bf16_supported()


@dataclass
class Setup:
    """Everything a run needs, built and validated before anything trains or is written."""

    config: DictConfig
    device: torch.device
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    clipper: Clipper
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None


def _positive_int(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(key, value, "must be an integer >= 1")


def build(config: DictConfig) -> Setup:
    """Validate the composed config and construct the run's parts; raises ConfigError on bad input."""
    try:
        OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ConfigError(err.full_key, "???", "a value: it has no default, set it on the command line") from None
    train = config.train
    for key in ("steps", "batch_size", "eval_every", "accumulate"):
        _positive_int(f"train.{key}", train[key])
    _positive_int("tracking.log_every", config.tracking.log_every)
    if train.get("threads") is not None:
        _positive_int("train.threads", train.threads)
    # One thread unless asked: torch's default (every core) collapses as soon as a second process
    # wants a core (a default sweep took 30 min instead of one beside another job), and a small
    # RNN's step gains nothing from a second thread. N workers on N cores then use them all.
    torch.set_num_threads(int(train.threads) if train.get("threads") is not None else 1)
    precision = str(train.precision)
    if precision not in PRECISIONS:
        raise ConfigError("train.precision", train.precision, f"one of {list(PRECISIONS)}")
    device = resolve_device(str(train.device))
    dtype = PRECISIONS[precision]
    if dtype is torch.bfloat16 and not bf16_supported(device):
        raise ConfigError("train.precision", precision, f"32 or 16: {device} has no bfloat16 support")
    clipper = make_clipper(OmegaConf.to_container(config.clip, resolve=True))
    task = instantiate_node("task", config.task)
    torch.manual_seed(int(train.seed))
    model = instantiate_node("model", config.model, **model_kwargs(task)).to(device)
    optimizer = instantiate_node("optim", config.optim, params=model.parameters())
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    setup = Setup(config, device, task, model, optimizer, clipper, dtype, scaler)
    if dtype is not None:
        _probe_precision(setup, precision)
    return setup


def _autocast(setup: Setup) -> Any:
    if setup.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(setup.device.type, dtype=setup.autocast_dtype)


def _probe_precision(setup: Setup, precision: str) -> None:
    """One forward/backward on two examples, so an unsupported kernel fails now, not mid-sweep."""
    x, y = setup.task.sample(2, torch.Generator().manual_seed(0))
    try:
        with _autocast(setup):
            loss = setup.task.loss(setup.model(x.to(setup.device)), y.to(setup.device))
        loss.backward()
    except RuntimeError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            "train.precision", precision, f"a precision this model supports on {setup.device} ({first_line})"
        ) from None
    finally:
        setup.model.zero_grad(set_to_none=True)


ANY_VAL = "val/*"
"""In ``reported_metrics``: the task's validation metrics could not be listed (its model raised)."""


def reported_metrics(setup: Setup) -> set[str]:
    """The metric names a run of ``setup`` returns (what a sweep's objective may name): its task's
    ``val/*`` (found by evaluating two validation examples), ``train/loss`` and the norm summary.

    A model that raises here would fail every trial, which the sweep reports as failed trials
    (exit 1 with the reason); its ``val/*`` names are then unknown, given as ``ANY_VAL``.
    """
    summary = Telemetry(list(setup.model.named_parameters()), 1, setup.device).summary.metrics()
    x, y = setup.task.validation()
    try:
        with torch.no_grad(), _autocast(setup):
            out = setup.model(x[:2].to(setup.device))
        names = {f"val/{name}" for name in {"loss", *task_metrics(setup.task, out, y[:2].to(setup.device))}}
    except Exception:
        names = {"val/loss", ANY_VAL}
    return names | {"train/loss"} | set(summary)


def require_reported(key: str, metric: str, setup: Setup, prefix: str = "") -> None:
    """Refuse (naming ``key``) a ``metric`` that a run of ``setup`` does not report, among those
    starting with ``prefix``: an objective nobody reports would fail every trial or rank nothing."""
    reported = {name for name in reported_metrics(setup) if name.startswith(prefix)}
    if metric not in reported and not (metric.startswith("val/") and ANY_VAL in reported):
        raise ConfigError(key, metric, f"a metric the job reports: one of {sorted(reported)}")


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


class Trainer:
    """Runs optimizer steps with clipping and telemetry; owns no tracking."""

    def __init__(self, setup: Setup, telemetry: Telemetry) -> None:
        self.setup = setup
        self.telemetry = telemetry
        self.parameters = [p for p in setup.model.parameters() if p.requires_grad]
        train = setup.config.train
        self.batch_size = int(train.batch_size)
        self.accumulate = int(train.accumulate)
        self.generator = torch.Generator().manual_seed(int(train.seed))

    def step(self, step: int) -> ClipStats:
        """One optimizer step: ``accumulate`` micro-batches, one clip, one update."""
        s = self.setup
        s.optimizer.zero_grad(set_to_none=True)
        loss_sum: Tensor | None = None
        s.model.train()
        for _ in range(self.accumulate):
            x, y = s.task.sample(self.batch_size, self.generator)
            x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
            with _autocast(s):
                loss = s.task.loss(s.model(x), y)
            if self.accumulate > 1:
                loss = loss / self.accumulate
            (s.scaler.scale(loss) if s.scaler is not None else loss).backward()
            loss_sum = loss.detach().float() if loss_sum is None else loss_sum + loss.detach().float()
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        if self.telemetry.wants_layers(step):
            self.telemetry.measure_layers(step, self.parameters)
        stats = s.clipper(self.parameters)
        self.telemetry.record(step, loss_sum, stats)
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        return stats

    @torch.no_grad()
    def evaluate(self, chunk: int = 512) -> dict[str, float]:
        s = self.setup
        s.model.eval()
        x_all, y_all = s.task.validation()
        totals: dict[str, Tensor] = {}
        for start in range(0, len(y_all), chunk):
            x = x_all[start : start + chunk].to(s.device)
            y = y_all[start : start + chunk].to(s.device)
            with _autocast(s):
                out = s.model(x)
            weight = len(y) / len(y_all)
            values = {"loss": s.task.loss(out, y), **task_metrics(s.task, out, y)}
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + value.float() * weight
        return {f"val/{name}": float(value) for name, value in totals.items()}


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _record_outcome(
    tracker: Tracker, telemetry: Telemetry, windows: list[Window], status: str, done: int, last_threshold: float
) -> None:
    """The run's tail: the last window, steps.csv, the norm summary and histogram, the status tags."""
    window = telemetry.drain()  # rows recorded before an early break
    if window is not None:
        windows.append(window)
        tracker.log_metrics(window.metrics())
    tracker.log_text(steps_csv(windows), "telemetry/steps.csv")
    summary_metrics = telemetry.summary.metrics()
    tracker.log_metrics((k, v, done) for k, v in summary_metrics.items() if math.isfinite(v))
    histogram = telemetry.summary.histogram
    tracker.log_text(json.dumps(histogram.to_dict(), indent=1), "telemetry/grad_norm_histogram.json")
    marks = {"threshold": last_threshold}
    tracker.log_figure(lambda: norm_histogram_png(histogram, marks), "telemetry/grad_norm_histogram.png")
    tracker.set_tags({STATUS_TAG: status, STEPS_DONE_TAG: str(done)})


def train(
    setup: Setup,
    tracker: Tracker,
    on_eval: EvalCallback | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    on_start: Callable[[str | None], None] | None = None,
) -> RunResult:
    """Train ``setup`` to ``train.steps`` (or divergence, or until ``on_eval`` says stop).

    ``tags`` and ``run_name`` add to the tracking run (a sweep names its trials' runs and nests
    them under its parent run); ``run_name`` falls back to ``tracking.run_name``. ``on_start``
    receives the tracking run id as soon as the run exists, so a crash later can still be traced.

    One long function on purpose: the loop's order (step, drain telemetry, evaluate, stop) and the run's
    lifecycle (started once, ended on every exit, KILLED on an interrupt) are checked most easily
    when they read top to bottom together.
    """
    config = setup.config
    steps, eval_every = int(config.train.steps), int(config.train.eval_every)
    fail_on_nonfinite = NonFinite(config.train.nonfinite) is NonFinite.fail
    telemetry = Telemetry(
        list(setup.model.named_parameters()), int(config.tracking.log_every), setup.device, total_steps=steps
    )
    trainer = Trainer(setup, telemetry)
    progress = RunProgress(steps, run_name or str(config.tracking.run_name or "run"))
    norm = math.nan
    resolved = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
    tracker.start_run(
        run_name or config.tracking.run_name,
        params=flatten(masked(resolved)),
        tags={
            CLIP_METHOD_TAG: str(resolved["clip"]["method"]),
            DEVICE_TAG: str(setup.device),
            **(tags or {}),
        },
    )
    if on_start is not None:
        on_start(tracker.run_id)
    tracker.log_text(OmegaConf.to_yaml(config), "config.yaml")
    status, done, train_loss, val = "finished", 0, math.nan, {}
    last_threshold = math.nan
    windows: list[Window] = []
    try:
        for step in range(steps):
            raise_if_requested()  # a SIGINT/SIGTERM recorded by the sweep's handler stops here, between writes
            trainer.step(step)
            done = step + 1
            last = done == steps
            if telemetry.full or last:
                window = telemetry.drain()
                windows.append(window)
                tracker.log_metrics(window.metrics())
                train_loss = _mean_finite(window.values["train/loss"])
                norms = window.values["grad/norm"][window.finite]
                norm = float(np.median(norms)) if norms.size else norm
                progress.window(done, train_loss, norm)
                thresholds = window.values["grad/threshold"][window.finite]
                last_threshold = float(thresholds[-1]) if thresholds.size else last_threshold
                if not window.finite.any() or (fail_on_nonfinite and not window.finite.all()):
                    status = "diverged"
                    break
            if done % eval_every == 0 or last:
                val = trainer.evaluate()
                progress.evaluated(done, train_loss, norm, val)
                tracker.log_metrics((k, v, done) for k, v in val.items())
                if not math.isfinite(val["val/loss"]):
                    status = "diverged"
                    break
                if on_eval is not None and on_eval(done, val):
                    status = "stopped"
                    break
        _record_outcome(tracker, telemetry, windows, status, done, last_threshold)
    except BaseException as err:
        tracker.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        progress.close()
    tracker.end_run(RUN_STATUS[status])
    return RunResult(status, done, train_loss, val, telemetry.summary, tracker.describe())
