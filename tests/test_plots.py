"""The per-run gradient-norm histogram PNG (sweeper/plots.py), read back pixel by pixel."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from clipsweep.histogram import NormHistogram
from clipsweep.plots import norm_histogram_png

AXES_LEFT, AXES_RIGHT = 64, 624
GREEN, ORANGE, RED, BLACK, PURPLE = (44, 160, 44), (255, 127, 14), (214, 39, 40), (0, 0, 0), (148, 103, 189)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _line_column(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    """The column inside the axes box holding most pixels of ``colour`` (a line, not a legend sample)."""
    inside = pixels[:, AXES_LEFT + 1 : AXES_RIGHT]
    hits = (inside == colour).all(axis=2).sum(axis=0)
    return AXES_LEFT + 1 + int(hits.argmax()) if hits.max() >= 40 else -1


def _norms() -> np.ndarray:
    return np.exp(np.random.default_rng(0).normal(-1.0, 1.0, 2000))


def test_norm_histogram_png_places_percentiles_and_marks_on_a_log_axis() -> None:
    norms = _norms()
    histogram = NormHistogram()
    histogram.add(norms)
    threshold = 0.5
    pixels = _decode(norm_histogram_png(histogram, {"threshold": threshold}))
    assert pixels.shape == (360, 640, 3)
    columns = {name: _line_column(pixels, colour) for name, colour in (("p50", GREEN), ("p90", ORANGE), ("p99", RED))}
    columns["threshold"] = _line_column(pixels, BLACK)
    assert 0 < columns["p50"] < columns["threshold"] < columns["p90"] < columns["p99"]
    # An independent oracle: numpy's percentiles of the raw norms, placed on a log axis by hand.
    logs = {name: math.log10(np.percentile(norms, q)) for name, q in (("p50", 50), ("p90", 90), ("p99", 99))}
    logs["threshold"] = math.log10(threshold)
    pixels_per_decade = (columns["p99"] - columns["p50"]) / (logs["p99"] - logs["p50"])
    for name in ("p90", "threshold"):
        expected = columns["p50"] + (logs[name] - logs["p50"]) * pixels_per_decade
        assert abs(columns[name] - expected) <= 2, (name, columns[name], expected)


def test_norm_histogram_png_draws_each_mark_in_its_own_colour() -> None:
    histogram = NormHistogram()
    histogram.add(_norms())
    pixels = _decode(norm_histogram_png(histogram, {"recommended": 0.3, "best trial 4": 2.0}))
    recommended, best = _line_column(pixels, BLACK), _line_column(pixels, PURPLE)
    assert 0 < recommended < best


def test_norm_histogram_png_leaves_out_marks_a_log_axis_cannot_show() -> None:
    histogram = NormHistogram()
    histogram.add(_norms())
    for bad in (math.nan, math.inf, 0.0, -1.0):
        pixels = _decode(norm_histogram_png(histogram, {"threshold": bad}))
        assert _line_column(pixels, RED) > 0  # the rest of the figure is still drawn
        assert _line_column(pixels, BLACK) == -1


def test_norm_histogram_png_renders_a_run_without_finite_steps() -> None:
    histogram = NormHistogram()
    histogram.add(np.array([math.nan, math.inf]))
    pixels = _decode(norm_histogram_png(histogram, {"threshold": 1.0}))
    assert pixels.shape == (360, 640, 3)
    assert _line_column(pixels, GREEN) == -1  # no percentiles to draw
