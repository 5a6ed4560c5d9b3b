"""K runs of one model shape trained as one batched model on one device, each run exactly itself.

On a GPU one small RNN per process is launch-bound: the card idles between tiny kernels. Trials of
a sweep that share the model's shape and the task's data (they differ in threshold, learning rate,
clip method and its knobs, optimizer, seed, steps) can share every kernel instead: their weights
gain a leading member axis (``models.batched.BatchedRNN``) and one forward/backward serves all.

What stays per run is everything that makes a trial a trial: its data stream (its own seeded
generator), its gradients (the summed losses separate exactly: members share no weight), its
clipper and telemetry, its optimizer and state (a torch optimizer over leaf views of its slices),
its evaluations, its pruning decision and its tracking run (``recording.RunRecorder``, as a lone
run's). A run that stops (pruned, diverged, done, failed) stops recording, stepping and computing:
the batch goes on with the others' slices only, until the longest run ends.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from clipsweep.batched_updates import FusedUpdate
from clipsweep.instantiation import instantiate_node
from clipsweep.interrupts import raise_if_requested
from clipsweep.models.batched import BatchedRNN, batching_obstacle
from clipsweep.progress import BatchProgress, QuietProgress
from clipsweep.recording import RunRecorder, RunResult
from clipsweep.telemetry import Telemetry
from clipsweep.tracker import Tracker
from clipsweep.training import Setup, add_validation_chunk, autocast

_EVAL_ROWS = 64 * 512
"""Members x validation examples evaluated at once (see ``BatchedTrainer.evaluate``)."""
_SHARED_TRAIN = ("batch_size", "accumulate", "precision", "device")
"""``train`` keys every member of a batch shares (one forward per micro-batch, one device, one
autocast); the others (seed, steps, eval_every, nonfinite, threads) stay per run."""


def batch_key(config: DictConfig) -> str:
    """Runs with equal keys can be one batch: the same model, the same task (hence data shapes and
    validation set) and the same ``_SHARED_TRAIN`` settings."""
    shared = {
        "model": OmegaConf.to_container(config.model, resolve=True, enum_to_str=True),
        "task": OmegaConf.to_container(config.task, resolve=True, enum_to_str=True),
        "train": {key: str(config.train[key]) for key in _SHARED_TRAIN},
    }
    return json.dumps(shared, sort_keys=True, default=str)


def obstacle(setup: Setup) -> str | None:
    """Why this built run cannot join a batch (None: it can)."""
    if setup.scaler is not None:
        return "train.precision=16 scales each run's loss by its own GradScaler"
    return batching_obstacle(setup.model)


class BatchedTrainer:
    """The batch's optimizer steps and evaluations; ``Trainer``'s step order, per member.

    Built from the members' ``Setup``s (each built by ``training.build`` as a lone run would be, so
    every member starts from the weights its seed gives); the members' own models and optimizers
    are replaced by their slices of the batch and optimizers over those slices.
    """

    def __init__(self, setups: Sequence[Setup]) -> None:
        for setup in setups:
            reason = obstacle(setup)
            if reason is not None:
                raise ValueError(f"cannot batch this run: {reason}")
        if len({batch_key(s.config) for s in setups}) != 1:
            raise ValueError(f"runs of one batch must share model, task and train.{{{', '.join(_SHARED_TRAIN)}}}")
        self.setups = list(setups)
        first = setups[0]
        self.device = first.device
        self.model = BatchedRNN([s.model for s in setups]).to(self.device)
        self.named = [self.model.member_parameters(k) for k in range(len(setups))]
        self.views = [[view for _, view in named] for named in self.named]
        self.optimizers = [
            instantiate_node("optim", s.config.optim, params=views) for s, views in zip(setups, self.views)
        ]
        # The common sweep (norm clipping, SGD or Adam, members differing in threshold and learning
        # rate) updates all members in one pass over the member axis; other mixes member by member.
        self.fused = FusedUpdate.for_members(list(self.model.weights), [s.clipper for s in setups], self.optimizers)
        self.generators = [torch.Generator().manual_seed(int(s.config.train.seed)) for s in setups]
        self.batch_size = int(first.config.train.batch_size)
        self._indexed: tuple[tuple[int, ...], Tensor | None] = ((), None)
        self.accumulate = int(first.config.train.accumulate)

    def _micro_batch(self, active: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
        """Each active member's next batch from its own generator, stacked on the member axis in
        ``active``'s order; a stopped member draws nothing."""
        drawn = [self.setups[k].task.sample(self.batch_size, self.generators[k]) for k in active]
        x = torch.stack([x for x, _ in drawn]).to(self.device, non_blocking=True)
        return x, [y.to(self.device, non_blocking=True) for _, y in drawn]

    def _members(self, active: Sequence[int]) -> Tensor | None:
        """The model's ``members`` argument: None while every member trains, else their indices
        (made once per change of ``active``: no host-to-device copy per step)."""
        key = tuple(active)
        if len(key) == len(self.setups):
            return None
        if key != self._indexed[0]:
            self._indexed = (key, torch.tensor(key, dtype=torch.long).to(self.device))
        return self._indexed[1]

    def step(self, step: int, active: Sequence[int], telemetries: Sequence[Telemetry]) -> None:
        """One optimizer step for every active member: backward over all micro-batches, then per
        member measure and clip once, record, step its optimizer."""
        if self.fused is None:
            for k in active:
                self.optimizers[k].zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)
        self.model.train()
        loss_sums: dict[int, Tensor] = {}
        for _ in range(self.accumulate):
            x, targets = self._micro_batch(active)
            with autocast(self.setups[0]):
                out = self.model(x, self._members(active))
            losses = [self.setups[k].task.loss(out[j], y) for j, (k, y) in enumerate(zip(active, targets))]
            if self.accumulate > 1:
                losses = [loss / self.accumulate for loss in losses]
            torch.stack(losses).sum().backward()  # members share no weight: each slice gets its own gradient
            for k, loss in zip(active, losses):
                value = loss.detach().float()
                loss_sums[k] = loss_sums[k] + value if k in loss_sums else value
        for k in active:
            layers = telemetries[k].wants_layers(step)
            if layers or self.fused is None:  # the views carry the grads that are measured or clipped
                self.model.attach_grads(k, self.views[k])
            if layers:  # per-layer norms before clipping, as a lone run
                telemetries[k].measure_layers(step, self.views[k])
        if self.fused is not None:
            stats = self.fused.clip()
            for k in active:
                telemetries[k].record(step, loss_sums[k], stats[k])
            self.fused.step(active)
            return
        for k in active:
            telemetries[k].record(step, loss_sums[k], self.setups[k].clipper(self.views[k]))
            self.optimizers[k].step()

    @torch.no_grad()
    def evaluate(self, active: Sequence[int] | None = None, chunk: int | None = None) -> dict[int, dict[str, float]]:
        """The validation metrics of the ``active`` members (all by default), by member index, in
        ``Trainer.evaluate``'s chunks (512 examples) and weights; past 64 members the chunk shrinks so
        that members x chunk stays at 64 x 512 (evaluation, not training, is a batch's memory peak:
        512 members x 512 examples held 16x a training step's activations)."""
        active = list(range(len(self.setups))) if active is None else list(active)
        chunk = chunk or min(512, max(1, _EVAL_ROWS // len(active)))
        self.model.eval()
        x_all, y_all = self.setups[0].task.validation()
        totals: list[dict[str, Tensor]] = [{} for _ in active]
        members = self._members(active)
        for start in range(0, len(y_all), chunk):
            x = x_all[start : start + chunk].to(self.device)
            y = y_all[start : start + chunk].to(self.device)
            with autocast(self.setups[0]):
                out = self.model(x.unsqueeze(0).expand(len(active), *x.shape), members)
            for j, k in enumerate(active):
                add_validation_chunk(totals[j], self.setups[k].task, out[j], y, len(y) / len(y_all))
        return {k: {f"val/{name}": float(value) for name, value in totals[j].items()} for j, k in enumerate(active)}


def train_batch(
    setups: Sequence[Setup], trackers: Sequence[Tracker], arguments: Sequence[Mapping[str, Any]]
) -> list[RunResult | Exception]:
    """Train the runs of ``setups`` as one batch; per run, what ``training.train(setup, tracker,
    **arguments)`` would return, or the exception that ended that run (its tracking run FAILED).

    A run whose recording fails (its store, its pruner's storage) fails alone; a failure of the
    batched step itself fails every run still training. An interrupt ends every open run KILLED and
    propagates.
    """
    trainer = BatchedTrainer(setups)
    recorders = [
        RunRecorder(s.config, named, s.device, tracker, **dict(args), progress=QuietProgress())
        for s, named, tracker, args in zip(setups, trainer.named, trackers, arguments)
    ]
    labels = [str(args.get("run_name") or f"run {k}") for k, args in enumerate(arguments)]
    progress = BatchProgress(max(r.steps for r in recorders), labels)
    results: list[RunResult | Exception | None] = [None] * len(setups)
    active: list[int] = []
    for k, recorder in enumerate(recorders):
        _settle(recorder, k, active, results, recorder.start, started=True)
    evaluations = _Evaluations(trainer)
    step = 0
    try:
        while active:
            raise_if_requested()  # a SIGINT/SIGTERM recorded by the sweep's handler stops here
            trainer.step(step, active, [r.telemetry for r in recorders])
            evaluations.clear(active)
            for k in list(active):
                after = partial(recorders[k].after_step, step, partial(evaluations, k))
                _settle(recorders[k], k, active, results, after)
            if evaluations.values is not None:
                _report(progress, step + 1, recorders, active)
            step += 1
    except Exception as err:  # the batched step: every run still training shares its failure
        for k in active:
            recorders[k].abort(err)
            results[k] = err
    except BaseException as err:
        for k in active:
            recorders[k].abort(err)
        raise
    return results  # type: ignore[return-value]


def _report(progress: BatchProgress, done: int, recorders: Sequence[RunRecorder], active: Sequence[int]) -> None:
    ended = Counter(r.status for k, r in enumerate(recorders) if k not in active)
    scores = [(r.val["val/loss"], k) for k, r in enumerate(recorders) if math.isfinite(r.val.get("val/loss", math.nan))]
    progress.evaluated(done, len(active), ended, min(scores) if scores else None)


class _Evaluations:
    """The batch's evaluation at the current step: computed once, for the members training at the
    step's start, and only when a member's schedule asks for it."""

    def __init__(self, trainer: BatchedTrainer) -> None:
        self.trainer = trainer
        self.active: list[int] = []
        self.values: dict[int, dict[str, float]] | None = None

    def clear(self, active: Sequence[int]) -> None:
        self.active, self.values = list(active), None

    def __call__(self, k: int) -> dict[str, float]:
        if self.values is None:
            self.values = self.trainer.evaluate(self.active)
        return self.values[k]


def _settle(
    recorder: RunRecorder,
    k: int,
    active: list[int],
    results: list[RunResult | Exception | None],
    call: Callable[[], object],
    started: bool = False,
) -> None:
    """Run one member's recording ``call``: after ``start`` the member is active; a True from
    ``after_step`` finishes it; an exception fails that member only."""
    try:
        outcome = call()
    except Exception as err:
        recorder.abort(err)
        results[k] = err
        if k in active:
            active.remove(k)
        return
    if started:
        active.append(k)
    elif outcome:
        active.remove(k)
        try:
            results[k] = recorder.finish()
        except Exception as err:  # finish ended the run FAILED itself
            results[k] = err
