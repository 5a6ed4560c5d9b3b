"""Histogram percentiles against numpy on the raw values; device buffers against what was recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.clipping import NormClip
from sweeper.telemetry import STEP_METRICS, NormHistogram, Telemetry, layer_name


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


@pytest.mark.parametrize(
    ("parameter", "layer"),
    [
        ("rnn.weight_hh_l1", "rnn.l1"),
        ("rnn.bias_ih_l0_reverse", "rnn.l0_reverse"),
        ("head.bias", "head"),
        ("encoder.block.0.weight", "encoder.block.0"),
        ("scale", "scale"),
    ],
)
def test_layer_name_groups_parameters_by_layer(parameter: str, layer: str) -> None:
    assert layer_name(parameter) == layer


def test_telemetry_drains_what_was_recorded_and_per_layer_norms() -> None:
    torch.manual_seed(0)
    model = torch.nn.LSTM(2, 4, num_layers=2)
    telemetry = Telemetry(list(model.named_parameters()), log_every=4, device=torch.device("cpu"))
    assert list(telemetry.layers) == ["l0", "l1"]
    params = list(model.parameters())
    recorded = []
    for step in range(4):
        model.zero_grad()
        model(torch.randn(3, 1, 2) * (step + 1))[0].sum().backward()
        if telemetry.wants_layers(step):
            expected_l1 = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params[4:]])).item()
            telemetry.measure_layers(step, params)
        stats = NormClip(0.5)(params)
        recorded.append(stats.norm.item())
        telemetry.record(step, torch.tensor(float(step)), stats)
    assert telemetry.full
    window = telemetry.drain()
    np.testing.assert_allclose(window.values["grad/norm"], recorded, rtol=1e-6)
    np.testing.assert_array_equal(window.values["train/loss"], [0, 1, 2, 3])
    np.testing.assert_array_equal(window.steps, [0, 1, 2, 3])
    assert set(window.values) == set(STEP_METRICS)
    assert window.layer_step == 0
    assert window.layer_norms["l1"] == pytest.approx(expected_l1, rel=1e-6)
    assert telemetry.summary.histogram.count == 4
    assert telemetry.drain() is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by the device benchmark)")
def test_telemetry_step_has_no_host_sync_on_cuda() -> None:
    model = torch.nn.LSTM(2, 8).cuda()
    params = list(model.parameters())
    telemetry = Telemetry(list(model.named_parameters()), log_every=8, device=torch.device("cuda"))
    clipper = NormClip(0.1)
    model(torch.randn(5, 3, 2, device="cuda"))[0].sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(8):
            stats = clipper(params)
            telemetry.record(step, stats.norm, stats)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert telemetry.drain().values["grad/norm"].shape == (8,)
