"""Per-step gradient telemetry kept on the device, and a mergeable summary of the norm distribution.

Recording a step only writes one row of a preallocated device buffer, so training never waits for
the device; the host reads the buffer once every ``log_every`` steps. The summary is a log-binned
histogram: percentiles from it carry a known relative error, and histograms from many runs (trials,
workers) add up bin by bin without re-reading every step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipsweep.clipping import ClipStats
from clipsweep.histogram import NormHistogram

STEP_METRICS = ("train/loss", "grad/norm", "grad/norm_clipped", "grad/threshold", "grad/clipped")
"""Metric names of the per-step values."""

# Device buffer columns. The last two are NaN when the clipper leaves them to be derived from
# norm and threshold on the host (see ClipStats).
_LOSS, _NORM, _THRESHOLD, _FINITE, _NORM_CLIPPED, _CLIPPED = range(6)

_LAYER_INDEX = re.compile(r"_l(\d+)(_reverse)?$")


def layer_name(parameter_name: str) -> str:
    """Group a parameter into its layer: ``rnn.weight_hh_l1`` → ``rnn.l1``, ``head.bias`` → ``head``.

    Recurrent modules keep all layers in one module, so the ``_l<k>`` suffix is what separates them.
    """
    module, _, leaf = parameter_name.rpartition(".")
    match = _LAYER_INDEX.search(leaf)
    suffix = f"l{match.group(1)}{'_reverse' if match.group(2) else ''}" if match else ""
    return ".".join(part for part in (module, suffix) if part) or leaf


@dataclass
class Window:
    """What one host read of the device buffers returns: ``log_every`` steps' worth."""

    steps: np.ndarray
    """Optimizer step index of each row."""
    values: dict[str, np.ndarray]
    """Per-step columns keyed by the metric names in STEP_METRICS."""
    finite: np.ndarray
    layer_step: int | None
    layer_norms: dict[str, float]

    def metrics(self) -> list[tuple[str, float, int]]:
        """The window's statistics as ``(key, value, step)``, stamped with its last step.

        Means are over the finite steps; ``grad/clipped`` is the fraction of the window's steps
        that were clipped, ``grad/norm_peak`` its largest finite norm (spikes stay visible), and
        ``grad/nonfinite`` how many steps were skipped. Every step's own values go to
        ``telemetry/steps.csv`` (see ``steps_csv``): one MLflow row costs ~0.1 ms, so per-step
        metrics would cost more than a small model's training step.
        """
        finite_norms = self.values["grad/norm"][self.finite]

        def mean(name: str) -> float:
            values = self.values[name][self.finite]
            return float(values.mean()) if values.size else math.nan

        step = int(self.steps[-1])
        stats = {
            "train/loss": mean("train/loss"),
            "grad/norm": mean("grad/norm"),
            "grad/norm_clipped": mean("grad/norm_clipped"),
            "grad/threshold": mean("grad/threshold"),
            "grad/clipped": float(self.values["grad/clipped"].mean()),
            "grad/norm_peak": float(finite_norms.max()) if finite_norms.size else math.nan,
            "grad/nonfinite": float((~self.finite).sum()),
        }
        rows = [(name, value, step) for name, value in stats.items()]
        if self.layer_step is not None:
            rows += [(f"grad/norm/{layer}", norm, self.layer_step) for layer, norm in self.layer_norms.items()]
        return rows


def steps_csv(windows: Sequence[Window]) -> str:
    """Every recorded step as CSV (``step``, the STEP_METRICS columns, ``finite``)."""
    lines = [",".join(("step", *STEP_METRICS, "finite"))]
    for w in windows:
        columns = [w.values[name] for name in STEP_METRICS]
        for i, step in enumerate(w.steps):
            lines.append(",".join((str(int(step)), *(repr(float(c[i])) for c in columns), str(int(w.finite[i])))))
    return "\n".join(lines) + "\n"


@dataclass
class NormSegments:
    """The run's finite pre-clip norms in ``len(histograms)`` equal spans of its planned steps.

    A recommendation drops each run's early transient (the largest norms come in the first steps,
    before the loss settles); keeping spans instead of one histogram lets the reader choose how
    much to drop after the runs are over, and spans still merge across runs bin by bin.
    """

    total_steps: int
    histograms: list[NormHistogram]
    clipped: list[int]
    """Clipped (finite) steps per span: a run's clip fraction under an adaptive threshold."""

    @classmethod
    def empty(cls, total_steps: int, n_segments: int = 10) -> NormSegments:
        n = max(1, min(n_segments, total_steps))
        return cls(total_steps, [NormHistogram() for _ in range(n)], [0] * n)

    def add(self, steps: np.ndarray, norms: np.ndarray, clipped: np.ndarray) -> None:
        n = len(self.histograms)
        index = np.minimum(steps * n // max(self.total_steps, 1), n - 1)
        for k in np.unique(index):
            rows = index == k
            self.histograms[int(k)].add(norms[rows])
            self.clipped[int(k)] += int(clipped[rows].sum())

    def first_kept(self, transient: float) -> int:
        """Index of the first span after dropping the ``transient`` fraction of planned steps."""
        if not 0.0 <= transient < 1.0:
            raise ValueError(f"transient={transient!r} must be a fraction in [0, 1)")
        return math.ceil(round(transient * len(self.histograms), 9))

    def steady(self, transient: float) -> tuple[NormHistogram, int]:
        """(merged histogram, clipped steps) of the spans after the transient."""
        merged = NormHistogram()
        start = self.first_kept(transient)
        for histogram in self.histograms[start:]:
            merged.merge(histogram)
        return merged, sum(self.clipped[start:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "histograms": [h.to_dict() for h in self.histograms],
            "clipped": list(self.clipped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormSegments:
        return cls(
            int(data["total_steps"]),
            [NormHistogram.from_dict(h) for h in data["histograms"]],
            [int(c) for c in data["clipped"]],
        )


@dataclass
class RunSummary:
    """Totals over a whole run, in the metric names the tracking store uses."""

    histogram: NormHistogram
    steps: int
    clipped_steps: int
    segments: NormSegments

    @property
    def clip_fraction(self) -> float:
        return self.clipped_steps / self.histogram.count if self.histogram.count else math.nan

    def metrics(self) -> dict[str, float]:
        h = self.histogram
        return {
            "grad/norm_p50": h.percentile(50),
            "grad/norm_p90": h.percentile(90),
            "grad/norm_p99": h.percentile(99),
            "grad/norm_max": h.maximum if h.count else math.nan,
            "grad/clip_fraction": self.clip_fraction,
            "grad/nonfinite_steps": float(h.nonfinite),
        }


class Telemetry:
    """Device-side step buffers with batched host reads.

    ``record`` costs two small device ops; ``measure_layers`` (every ``log_every`` steps) one foreach
    norm; ``drain`` is the only place that synchronises, once per window.
    """

    def __init__(
        self,
        named_parameters: Sequence[tuple[str, Tensor]],
        log_every: int,
        device: torch.device,
        total_steps: int | None = None,
    ) -> None:
        if log_every < 1:
            raise ValueError(f"log_every={log_every!r} must be >= 1")
        self.log_every = log_every
        self.layers: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(named_parameters):
            self.layers.setdefault(layer_name(name), []).append(i)
        self._rows = torch.zeros((log_every, 6), dtype=torch.float32, device=device)
        self._unset = torch.full((2,), math.nan, dtype=torch.float32, device=device)
        self._layer_norms = torch.zeros(len(self.layers), dtype=torch.float32, device=device)
        self._layer_step: int | None = None
        self._first_step = 0
        self._n = 0
        # Without a planned length (a user's own loop), spans are laid out for a million steps.
        segments = NormSegments.empty(total_steps or 1_000_000)
        self.summary = RunSummary(NormHistogram(), steps=0, clipped_steps=0, segments=segments)

    def wants_layers(self, step: int) -> bool:
        return step % self.log_every == 0

    def measure_layers(self, step: int, parameters: Sequence[Tensor]) -> None:
        """Per-layer pre-clip norms; call between backward and clipping on steps where wanted."""
        grads = [p.grad for p in parameters]
        norms = torch._foreach_norm([g for g in grads if g is not None])
        by_index, j = {}, 0
        for i, g in enumerate(grads):
            if g is not None:
                by_index[i] = norms[j]
                j += 1
        zero = torch.zeros((), device=self._layer_norms.device)
        per_layer = [
            torch.linalg.vector_norm(torch.stack([by_index.get(i, zero).float() for i in members]))
            for members in self.layers.values()
        ]
        self._layer_norms.copy_(torch.stack(per_layer))
        self._layer_step = step

    def record(self, step: int, loss: Tensor, stats: ClipStats) -> None:
        if self._n == 0:
            self._first_step = step
        if stats.norm_clipped is None:
            row = torch.cat([torch.stack([loss, stats.norm, stats.threshold, stats.finite.float()]), self._unset])
        else:
            row = torch.stack(
                [loss, stats.norm, stats.threshold, stats.finite.float(), stats.norm_clipped, stats.clipped.float()]
            )
        self._rows[self._n].copy_(row)
        self._n += 1

    @property
    def full(self) -> bool:
        return self._n >= self.log_every

    def pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(train loss, pre-clip norm, finite) of the rows recorded since the last drain, left in place.

        For an evaluation due before its window is full (``eval_every`` not a multiple of
        ``log_every``), whose progress line would otherwise show NaN or a stale window. One host
        read; an evaluation synchronises anyway."""
        host = self._host_rows()
        return None if host is None else (host[:, _LOSS], host[:, _NORM], host[:, _FINITE] > 0.5)

    def _host_rows(self) -> np.ndarray | None:
        """The rows recorded since the last drain, on the host in float64; None when there are none."""
        return self._rows[: self._n].cpu().numpy().astype(np.float64) if self._n else None

    def drain(self) -> Window | None:
        """Move the recorded rows to the host, fold them into the summary and reset the buffer."""
        host = self._host_rows()
        if host is None:
            return None
        layer_norms = self._layer_norms.cpu().numpy() if self._layer_step is not None else None
        norm, threshold, finite = host[:, _NORM], host[:, _THRESHOLD], host[:, _FINITE] > 0.5
        derive = np.isnan(host[:, _NORM_CLIPPED])
        with np.errstate(invalid="ignore"):
            norm_clipped = np.where(derive, np.minimum(norm, threshold), host[:, _NORM_CLIPPED])
            clipped = np.where(derive, norm > threshold, host[:, _CLIPPED] > 0.5)
        columns = {
            "train/loss": host[:, _LOSS],
            "grad/norm": norm,
            "grad/norm_clipped": np.where(finite, norm_clipped, 0.0),
            "grad/threshold": threshold,
            "grad/clipped": (clipped & finite).astype(np.float64),
        }
        # A zeroed (skipped) step still records its non-finite pre-clip norm; the histogram counts
        # it as non-finite and keeps it out of every percentile.
        self.summary.histogram.add(columns["grad/norm"])
        self.summary.steps += self._n
        self.summary.clipped_steps += int(columns["grad/clipped"][finite].sum())
        steps = np.arange(self._first_step, self._first_step + self._n)
        self.summary.segments.add(steps, columns["grad/norm"], columns["grad/clipped"])
        window = Window(
            steps=steps,
            values=columns,
            finite=finite,
            layer_step=self._layer_step,
            layer_norms={} if layer_norms is None else dict(zip(self.layers, map(float, layer_norms))),
        )
        self._n = 0
        self._layer_step = None
        return window
