"""Histogram percentiles against numpy on the raw values; merging equals the histogram of the union."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clipsweep.histogram import NormHistogram


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [1, 2, 17, 5000])
def test_norm_histogram_percentiles_within_stated_error(seed: int, n: int) -> None:
    values = np.random.default_rng(seed).lognormal(mean=-1.0, sigma=2.0, size=n)
    histogram = NormHistogram()
    histogram.add(values)
    for q in (0, 1, 10, 50, 90, 99, 100):
        exact = float(np.percentile(values, q))
        assert histogram.percentile(q) == pytest.approx(exact, rel=histogram.relative_error * 1.0001)


def test_norm_histogram_error_bound_is_tight_enough_to_matter() -> None:
    assert NormHistogram().relative_error < 0.012
    coarse = NormHistogram(bins_per_decade=5)
    values = np.linspace(1.0, 9.0, 999)
    coarse.add(values)
    errors = [abs(coarse.percentile(q) - np.percentile(values, q)) / np.percentile(values, q) for q in range(1, 100)]
    assert max(errors) <= coarse.relative_error * 1.0001
    assert max(errors) > coarse.relative_error / 4  # the bound is not vacuous


def test_norm_histogram_counts_nonfinite_apart_and_handles_zero() -> None:
    histogram = NormHistogram()
    histogram.add([0.0, 1.0, math.nan, math.inf, 2.0])
    assert (histogram.count, histogram.nonfinite) == (3, 2)
    assert histogram.percentile(0) == 0.0
    assert histogram.percentile(100) == 2.0
    assert histogram.percentile(50) == pytest.approx(1.0, rel=histogram.relative_error * 1.0001)


def test_norm_histogram_merge_equals_histogram_of_union() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(size=300), rng.lognormal(mean=2.0, size=700)
    merged = NormHistogram()
    merged.add(a)
    other = NormHistogram()
    other.add(b)
    merged.merge(other)
    union = NormHistogram()
    union.add(np.concatenate([a, b]))
    assert merged.to_dict() == union.to_dict()
    for q in (50, 90, 99):
        assert merged.percentile(q) == pytest.approx(
            np.percentile(np.concatenate([a, b]), q), rel=merged.relative_error
        )


def test_norm_histogram_round_trips_through_dict() -> None:
    histogram = NormHistogram()
    histogram.add(np.random.default_rng(4).lognormal(size=100))
    histogram.add([math.nan])
    restored = NormHistogram.from_dict(histogram.to_dict())
    assert restored == histogram
    assert NormHistogram.from_dict(NormHistogram().to_dict()) == NormHistogram()


def test_norm_histogram_rejects_merging_other_binning() -> None:
    with pytest.raises(ValueError, match="binning"):
        NormHistogram().merge(NormHistogram(bins_per_decade=10))
