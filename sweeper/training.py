"""One training run: build everything from the config (validating it), then train with clipping.

The step order follows nanoGPT: backward for every micro-batch → (AMP) unscale → measure & clip once
→ optimizer step → scaler update. Nothing in the step reads a device value on the host; the host
looks at the device only every ``tracking.log_every`` steps and at evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import Tensor, nn

from clipsweep.clipping import Clipper, ClipStats, make_clipper
from clipsweep.errors import ConfigError
from clipsweep.instantiation import instantiate_node
from clipsweep.interrupts import raise_if_requested
from clipsweep.recording import EvalCallback, RunRecorder, RunResult
from clipsweep.tasks import Task, model_kwargs
from clipsweep.tasks import metrics as task_metrics
from clipsweep.telemetry import Telemetry
from clipsweep.tracker import Tracker

PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


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


def autocast(setup: Setup) -> Any:
    """The run's mixed-precision context (none at 32 bits)."""
    if setup.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(setup.device.type, dtype=setup.autocast_dtype)


def _probe_precision(setup: Setup, precision: str) -> None:
    """One forward/backward on two examples, so an unsupported kernel fails now, not mid-sweep."""
    x, y = setup.task.sample(2, torch.Generator().manual_seed(0))
    try:
        with autocast(setup):
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
        with torch.no_grad(), autocast(setup):
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
            with autocast(s):
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
            with autocast(s):
                out = s.model(x)
            add_validation_chunk(totals, s.task, out, y, len(y) / len(y_all))
        return {f"val/{name}": float(value) for name, value in totals.items()}


def add_validation_chunk(totals: dict[str, Tensor], task: Task, out: Tensor, y: Tensor, weight: float) -> None:
    """Add one validation chunk's loss and metrics, weighted by its share of the set, to ``totals``."""
    for name, value in {"loss": task.loss(out, y), **task_metrics(task, out, y)}.items():
        totals[name] = totals.get(name, 0.0) + value.float() * weight


def train(
    setup: Setup,
    tracker: Tracker,
    on_eval: EvalCallback | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    on_start: Callable[[str | None], None] | None = None,
) -> RunResult:
    """Train ``setup`` to ``train.steps`` (or divergence, or until ``on_eval`` says stop); the
    tracking run and its arguments are ``RunRecorder``'s."""
    named = list(setup.model.named_parameters())
    recorder = RunRecorder(setup.config, named, setup.device, tracker, on_eval, tags, run_name, on_start)
    trainer = Trainer(setup, recorder.telemetry)
    recorder.start()
    try:
        for step in range(recorder.steps):
            raise_if_requested()  # a SIGINT/SIGTERM recorded by the sweep's handler stops here, between writes
            trainer.step(step)
            if recorder.after_step(step, trainer.evaluate):
                break
    except BaseException as err:
        recorder.abort(err)
        raise
    return recorder.finish()
