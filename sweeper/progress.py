"""Live progress of a run: a tqdm bar on a terminal, one line per evaluation anywhere else (a log
file, CI, a sweep's jobs), each with step/total, train loss, gradient norm, validation loss and ETA.

tqdm (already installed with Optuna) rather than hand-written carriage returns: it handles terminal
width, rates and nested bars, and writes nothing but the bar to the terminal it owns.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from clipsweep.names import REPEAT_OF_ATTR


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def eta(elapsed: float, done: int, total: int) -> str:
    """Remaining time at the rate so far."""
    if total <= done:
        return "0 s"
    return "?" if done <= 0 else duration(elapsed / done * (total - done))


def sweep_eta(trials: Sequence[FrozenTrial], n_trials: int, n_jobs: int) -> str:
    """Remaining time of a sweep: the mean duration of its finished trials (any worker's) times the
    batches of ``n_jobs`` still to run."""
    spans = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and t.datetime_start
        and t.datetime_complete
        and REPEAT_OF_ATTR not in t.user_attrs  # told at once: not a trial's duration
    ]
    left = n_trials - sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    if left <= 0:
        return "0 s"
    return "?" if not spans else duration(sum(spans) / len(spans) * math.ceil(left / n_jobs))


class RunProgress:
    """Progress of one training run; ``label`` names it (``run``, ``trial-7``)."""

    def __init__(self, total: int, label: str, terminal: TextIO | None = None, log: TextIO | None = None) -> None:
        """A bar on ``terminal`` (default: standard error) when it is one, else lines to ``log`` (stdout)."""
        self.total, self.label = total, label
        terminal = terminal or sys.stderr
        self.log = log or sys.stdout
        self.started = time.perf_counter()
        self.bar = None
        if getattr(terminal, "isatty", lambda: False)():
            self.bar = tqdm(total=total, desc=label, file=terminal, leave=False, dynamic_ncols=True, unit="step")

    def window(self, done: int, train_loss: float, norm: float) -> None:
        """After each telemetry read: move the bar (a terminal only)."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"loss {train_loss:.4g} | norm {norm:.3g}", refresh=False)

    def evaluated(self, done: int, train_loss: float, norm: float, val: Mapping[str, float]) -> None:
        """After each evaluation: the bar's text on a terminal, one line elsewhere."""
        scores = " | ".join(f"{k} {v:.4g}" for k, v in val.items())
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"loss {train_loss:.4g} | norm {norm:.3g} | {scores}")
            return
        loss = "nan" if math.isnan(train_loss) else f"{train_loss:.4g}"
        line = f"[{self.label}] step {done}/{self.total} | train/loss {loss} | grad norm {norm:.3g} | {scores}"
        left = eta(time.perf_counter() - self.started, done, self.total)
        print(f"{line} | ETA {left}", file=self.log, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class QuietProgress(RunProgress):
    """A run that reports through its batch's line (``BatchProgress``): no bar, no line of its own
    (64 bars on one terminal overwrite each other)."""

    def __init__(self) -> None:
        self.bar = None

    def window(self, done: int, train_loss: float, norm: float) -> None:
        pass

    def evaluated(self, done: int, train_loss: float, norm: float, val: Mapping[str, float]) -> None:
        pass


class BatchProgress:
    """One line per evaluation step for a batch of runs trained as one model: how many still train,
    how many ended (and how), the best ``val/loss`` so far and which run has it, and the ETA."""

    def __init__(self, total: int, labels: Sequence[str], log: TextIO | None = None) -> None:
        self.total, self.labels = total, list(labels)
        self.log = log or sys.stdout
        self.started = time.perf_counter()
        self.best: tuple[float, int] | None = None

    def evaluated(self, done: int, training: int, ended: Mapping[str, int], best: tuple[float, int] | None) -> None:
        """``best``: this evaluation's lowest (val/loss, run index); the line shows the lowest so far."""
        if best is not None and (self.best is None or best < self.best):
            self.best = best
        endings = ", ".join(f"{n} {status}" for status, n in sorted(ended.items()) if n) or "none"
        leader = "" if self.best is None else f" | best val/loss {self.best[0]:.4g} ({self.labels[self.best[1]]})"
        left = eta(time.perf_counter() - self.started, done, self.total)
        print(
            f"[batch of {len(self.labels)}] step {done}/{self.total} | training {training}, ended: {endings}"
            f"{leader} | ETA {left}",
            file=self.log,
            flush=True,
        )
