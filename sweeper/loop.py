"""The clipping and telemetry of ``clipsweep run``, for a training loop of the user's own.

```python
clipper = GradClipper.from_file("conf/clip/best.yaml")  # or .from_config({"method": "norm", ...})
for x, y in loader:
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    norm = clipper(model.parameters())  # pre-clip global norm, a 0-dim tensor on the device
    optimizer.step()
print(clipper.summary())  # p50/p90/p99 of the norms, clip fraction, non-finite steps
```

It runs the same ``Clipper`` the trainer runs (non-finite steps zeroed, adaptive state kept) and
records every step in the same device buffers, read on the host every ``log_every`` steps, so it
adds no host synchronisation to the loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clipsweep.clipping import Clipper, make_clipper
from clipsweep.histogram import NormHistogram
from clipsweep.telemetry import Telemetry


class GradClipper:
    """Call once per optimizer step, after backward (and ``scaler.unscale_``), before ``step``."""

    def __init__(self, clip: Mapping[str, Any], log_every: int = 100) -> None:
        self.clipper: Clipper = make_clipper(dict(clip))
        self.clip = dict(clip)
        self.log_every = log_every
        self._telemetry: Telemetry | None = None
        self._step = 0

    @classmethod
    def from_config(cls, clip: Mapping[str, Any], log_every: int = 100) -> GradClipper:
        return cls(clip, log_every)

    @classmethod
    def from_file(cls, path: str | Path, log_every: int = 100) -> GradClipper:
        """From a file written by ``clipsweep export`` (YAML clip group or JSON)."""
        from clipsweep.export import load_clip

        return cls(load_clip(Path(path)), log_every)

    def __call__(self, parameters: Iterable[Tensor]) -> Tensor:
        parameters = [p for p in parameters if p.requires_grad]
        if self._telemetry is None:  # the device is known once gradients exist
            device = next(p.grad.device for p in parameters if p.grad is not None)
            named = [(str(i), p) for i, p in enumerate(parameters)]
            self._telemetry = Telemetry(named, self.log_every, device)
            self._nan = torch.full((), math.nan, device=device)
        stats = self.clipper(parameters)
        self._telemetry.record(self._step, self._nan, stats)
        self._step += 1
        if self._telemetry.full:
            self._telemetry.drain()
        return stats.norm

    @property
    def histogram(self) -> NormHistogram:
        """Every pre-clip norm so far (reads pending device rows)."""
        if self._telemetry is None:
            return NormHistogram()
        self._telemetry.drain()
        return self._telemetry.summary.histogram

    def summary(self) -> dict[str, float]:
        """Percentiles of the pre-clip norms, the share of clipped steps and the non-finite count."""
        if self._telemetry is None:
            return {}
        self._telemetry.drain()
        return self._telemetry.summary.metrics()
