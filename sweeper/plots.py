"""The gradient-norm histogram as a PNG, drawn with Pillow.

Every run (so every trial) ends with one. Drawn with matplotlib it cost ~75 ms of text layout on
the run's tail plus ~0.3 s to import matplotlib in each new process, most of the whole MLflow
logging overhead of a short run; Pillow draws the same picture in a few milliseconds. matplotlib
stays for the sweep's Optuna plots, which are drawn once per sweep.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clipsweep.histogram import NormHistogram

_WIDTH, _HEIGHT = 640, 360
_LEFT, _TOP, _RIGHT, _BOTTOM = 64, 34, 624, 308
"""The axes box in pixels; the margins hold the tick labels, axis labels and title."""
_BAR = (150, 187, 219)
_PERCENTILES = ((50, (44, 160, 44)), (90, (255, 127, 14)), (99, (214, 39, 40)))
"""Dashed lines at these percentiles (matplotlib's tab:green, tab:orange, tab:red)."""
_MARK_COLOURS = ((0, 0, 0), (148, 103, 189), (140, 86, 75))
"""Solid lines for the caller's marks (thresholds), in this order."""
_MAX_X_LABELS = 8


@functools.cache
def _font(size: int) -> Any:
    """DejaVu Sans from matplotlib's package data (found without importing matplotlib), else Pillow's."""
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _nice_step(span: float, target: int = 5) -> float:
    """A 1, 2 or 5 x 10^k step giving about ``target`` intervals over ``span``."""
    raw = span / target
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _x_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis spanning ``10**lo`` .. ``10**hi``: decades, or 1-2-5 within one."""
    first, last = math.ceil(lo), math.floor(hi)
    if last - first >= 1:
        every = max(1, math.ceil((last - first + 1) / _MAX_X_LABELS))
        return [10.0**k for k in range(first, last + 1, every)]
    low, high = 10.0**lo, 10.0**hi  # within a decade the axis is nearly linear: linear steps
    step = _nice_step(high - low)
    return [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)]


def _vline(draw: Any, x: float, colour: tuple[int, int, int], dashed: bool) -> None:
    column = round(x)
    if not dashed:
        draw.line([(column, _TOP), (column, _BOTTOM)], fill=colour, width=2)
        return
    for y in range(_TOP, _BOTTOM, 9):
        draw.line([(column, y), (column, min(y + 5, _BOTTOM))], fill=colour, width=2)


def _draw_bars(draw: Any, edges: np.ndarray, counts: np.ndarray, x: Callable[[float], float]) -> None:
    y_top = counts.max() * 1.05
    for low, high, count in zip(edges[:-1], edges[1:], counts):
        if count:
            top = _BOTTOM - count / y_top * (_BOTTOM - _TOP)
            draw.rectangle([x(low), top, max(x(high) - 1, x(low)), _BOTTOM], fill=_BAR)
    font = _font(11)
    step = _nice_step(y_top)
    for k in range(int(y_top / step) + 1):
        value = k * step
        y = _BOTTOM - value / y_top * (_BOTTOM - _TOP)
        draw.line([(_LEFT - 4, y), (_LEFT, y)], fill="black")
        draw.text((_LEFT - 6, y), f"{value:g}", fill="black", font=font, anchor="rm")


def _draw_legend(draw: Any, entries: list[tuple[str, tuple[int, int, int], str]]) -> None:
    font = _font(11)
    width = max(draw.textlength(text, font=font) for text, _, _ in entries) + 36
    left, top = _RIGHT - width - 6, _TOP + 6
    draw.rectangle([left, top, _RIGHT - 6, top + 16 * len(entries) + 6], fill="white", outline=(200, 200, 200))
    for i, (text, colour, style) in enumerate(entries):
        y = top + 11 + 16 * i
        if style == "bar":
            draw.rectangle([left + 6, y - 4, left + 26, y + 4], fill=colour)
        elif style == "dashed":
            for x in (left + 6, left + 18):
                draw.line([(x, y), (x + 7, y)], fill=colour, width=2)
        else:
            draw.line([(left + 6, y), (left + 26, y)], fill=colour, width=2)
        draw.text((left + 32, y), text, fill="black", font=font, anchor="lm")


def norm_histogram_png(histogram: NormHistogram, marks: Mapping[str, float] | None = None) -> bytes:
    """The pre-clip norm distribution on a log axis, p50/p90/p99 dashed, ``marks`` (thresholds) solid.

    Marks that are not finite and positive cannot sit on a log axis and are left out.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (_WIDTH, _HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    shown = {label: v for label, v in (marks or {}).items() if math.isfinite(v) and v > 0}
    edges, counts = histogram.bin_edges_and_counts()
    legend: list[tuple[str, tuple[int, int, int], str]] = []
    if counts.size:
        values = np.log10([edges[0], edges[-1], *shown.values()])
        pad = 0.03 * max(values.max() - values.min(), 0.5)
        lo, hi = values.min() - pad, values.max() + pad

        def x(value: float) -> float:
            return _LEFT + (math.log10(value) - lo) / (hi - lo) * (_RIGHT - _LEFT)

        _draw_bars(draw, edges, counts, x)
        legend.append((f"{histogram.count} finite steps", _BAR, "bar"))
        for q, colour in _PERCENTILES:
            value = histogram.percentile(q)
            _vline(draw, x(value), colour, dashed=True)
            legend.append((f"p{q} = {value:.3g}", colour, "dashed"))
        for (label, value), colour in zip(shown.items(), _MARK_COLOURS):
            _vline(draw, x(value), colour, dashed=False)
            legend.append((f"{label} = {value:.3g}", colour, "solid"))
        font = _font(11)
        for tick in _x_ticks(lo, hi):
            draw.line([(x(tick), _BOTTOM), (x(tick), _BOTTOM + 4)], fill="black")
            draw.text((x(tick), _BOTTOM + 6), f"{tick:g}", fill="black", font=font, anchor="mt")
        _draw_legend(draw, legend)
    else:
        draw.text(
            ((_LEFT + _RIGHT) / 2, (_TOP + _BOTTOM) / 2), "no finite steps", fill="black", font=_font(14), anchor="mm"
        )
    draw.rectangle([_LEFT, _TOP, _RIGHT, _BOTTOM], outline="black")
    font = _font(12)
    title = f"gradient norms ({histogram.nonfinite} non-finite steps not shown)"
    draw.text((_WIDTH / 2, _TOP / 2), title, fill="black", font=_font(14), anchor="mm")
    draw.text(
        ((_LEFT + _RIGHT) / 2, _HEIGHT - 8), "pre-clip global gradient norm", fill="black", font=font, anchor="md"
    )
    label = Image.new("RGB", (60, 16), "white")
    ImageDraw.Draw(label).text((30, 8), "steps", fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (4, (_TOP + _BOTTOM) // 2 - 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
