"""The summary of a gradient-norm distribution: a log-binned histogram. Percentiles from it carry a
known relative error, and histograms from many runs (trials, workers) add up bin by bin without
re-reading every step."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class NormHistogram:
    """Log-binned counts of finite, positive norms plus exact count/min/max and a non-finite count.

    With ``bins_per_decade`` bins per power of ten a bin spans a factor ``10**(1/bins_per_decade)``;
    a percentile is read at its bin's geometric centre, so it lies within ``relative_error`` of the
    exact (numpy 'linear') percentile of the recorded values.
    """

    bins_per_decade: int = 100
    low: float = 1e-12
    high: float = 1e12
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    nonfinite: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf

    @property
    def relative_error(self) -> float:
        return 10 ** (0.5 / self.bins_per_decade) - 1

    @property
    def _n_bins(self) -> int:
        return round(math.log10(self.high / self.low) * self.bins_per_decade)

    def add(self, values: np.ndarray | Sequence[float]) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        finite = np.isfinite(values)
        self.nonfinite += int((~finite).sum())
        values = values[finite]
        if values.size == 0:
            return
        self.count += int(values.size)
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        # Bin 0 collects zeros and values below `low`, bin n+1 values above `high`.
        with np.errstate(divide="ignore"):
            raw = np.floor(np.log10(values / self.low) * self.bins_per_decade)
        index = np.clip(np.nan_to_num(raw, neginf=-1), -1, self._n_bins).astype(np.int64) + 1
        for b, c in zip(*np.unique(index, return_counts=True)):
            self.counts[int(b)] = self.counts.get(int(b), 0) + int(c)

    def merge(self, other: NormHistogram) -> NormHistogram:
        """Add another histogram's counts into this one (same binning required); returns self."""
        if (other.bins_per_decade, other.low, other.high) != (self.bins_per_decade, self.low, self.high):
            raise ValueError("cannot merge histograms with different binning")
        for b, c in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + c
        self.count += other.count
        self.nonfinite += other.nonfinite
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        return self

    def _value_at_rank(self, rank: int, bins: np.ndarray, cumulative: np.ndarray) -> float:
        b = int(bins[np.searchsorted(cumulative, rank, side="right")])
        return float(min(max(self._centre(b), self.minimum), self.maximum))

    def _centre(self, b: int) -> float:
        """The value a bin stands for: its geometric centre; the two overflow bins hold min / max."""
        if b == 0:
            return self.minimum
        if b == self._n_bins + 1:
            return self.maximum
        return self.low * 10 ** ((b - 1 + 0.5) / self.bins_per_decade)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) with numpy's default linear interpolation between ranks."""
        if not 0 <= q <= 100:
            raise ValueError(f"q={q!r} must be in [0, 100]")
        if self.count == 0:
            return math.nan
        bins = np.array(sorted(self.counts))
        cumulative = np.cumsum([self.counts[b] for b in bins])
        position = q / 100 * (self.count - 1)
        lo, hi = math.floor(position), math.ceil(position)
        v_lo = self._value_at_rank(lo, bins, cumulative)
        v_hi = v_lo if hi == lo else self._value_at_rank(hi, bins, cumulative)
        return v_lo + (v_hi - v_lo) * (position - lo)

    def fraction_above(self, threshold: float) -> float:
        """Share of the finite values above ``threshold``, read at bin centres like ``percentile``."""
        if self.count == 0:
            return math.nan
        above = sum(c for b, c in self.counts.items() if self._centre(b) > threshold)
        return above / self.count

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; counts are dense from the first occupied bin (``offset``) to keep it small."""
        first = min(self.counts) if self.counts else 0
        last = max(self.counts) if self.counts else -1
        return {
            "bins_per_decade": self.bins_per_decade,
            "low": self.low,
            "high": self.high,
            "offset": first,
            "counts": [self.counts.get(b, 0) for b in range(first, last + 1)],
            "count": self.count,
            "nonfinite": self.nonfinite,
            "minimum": self.minimum if self.count else None,
            "maximum": self.maximum if self.count else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormHistogram:
        offset = int(data["offset"])
        return cls(
            bins_per_decade=int(data["bins_per_decade"]),
            low=float(data["low"]),
            high=float(data["high"]),
            counts={offset + i: int(c) for i, c in enumerate(data["counts"]) if c},
            count=int(data["count"]),
            nonfinite=int(data["nonfinite"]),
            minimum=math.inf if data["minimum"] is None else float(data["minimum"]),
            maximum=-math.inf if data["maximum"] is None else float(data["maximum"]),
        )

    def bin_edges_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges and counts of the occupied range, for plotting."""
        if not self.counts:
            return np.array([]), np.array([])
        first, last = min(self.counts), max(self.counts)
        indices = np.arange(first, last + 1)
        edges = self.low * 10 ** ((np.arange(first, last + 2) - 1) / self.bins_per_decade)
        return edges, np.array([self.counts.get(int(i), 0) for i in indices])
