"""Device buffers against what was recorded; per-layer norms against torch on the same gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipsweep.clipping import NormClip
from clipsweep.telemetry import STEP_METRICS, Telemetry, layer_name


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
