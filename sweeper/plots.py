"""Figures logged as artifacts; matplotlib is imported here only, and only when a figure is made."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeper.telemetry import NormHistogram


def norm_histogram_figure(histogram: NormHistogram, marks: Mapping[str, float] | None = None) -> Any:
    """The pre-clip norm distribution on a log axis with p50/p90/p99 and thresholds (``marks``) drawn."""
    # The object-oriented API, not pyplot: no global figure registry, safe off the main thread.
    from matplotlib.figure import Figure

    # Fixed margins instead of tight_layout, which renders the figure once more just to measure it.
    figure = Figure(figsize=(7, 4), dpi=80)
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.92)
    axes = figure.subplots()
    edges, counts = histogram.bin_edges_and_counts()
    if counts.size:
        axes.stairs(counts, edges, fill=True, alpha=0.6, label=f"{histogram.count} finite steps")
        for q, colour in ((50, "tab:green"), (90, "tab:orange"), (99, "tab:red")):
            value = histogram.percentile(q)
            axes.axvline(value, color=colour, linestyle="--", label=f"p{q} = {value:.3g}")
        axes.set_xscale("log")
    for (label, value), style in zip((marks or {}).items(), ("-", ":", "-.")):
        if value == value and abs(value) != float("inf"):
            axes.axvline(value, color="black", linestyle=style, label=f"{label} = {value:.3g}")
    axes.set_xlabel("pre-clip global gradient norm")
    axes.set_ylabel("steps")
    axes.set_title(f"gradient norms ({histogram.nonfinite} non-finite steps not shown)")
    axes.legend(fontsize="small")
    return figure
