"""Each clip method against an independent oracle, plus non-finite handling and validation."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from autoclip.torch import QuantileClip
from torch import nn
from zclip import ZClip as ReferenceZClip

from clipsweep.clipping import (
    AGC,
    ClipMethod,
    NoClip,
    NormClip,
    PercentileClip,
    ValueClip,
    ZClip,
    clip_schema,
    clipper_class,
    make_clipper,
)
from clipsweep.clipping.percentile import _nanquantile
from clipsweep.errors import ConfigError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.LSTM(3, 8, batch_first=True), _Last(), nn.Linear(8, 2))


class _Last(nn.Module):
    def forward(self, x):
        return x[0][:, -1]


def _backward(model: nn.Module, step: int, scale: float = 1.0) -> None:
    model.zero_grad(set_to_none=True)
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(4, 5, 3, generator=g) * scale
    model(x).pow(2).sum().mul(scale).backward()


def _twins(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    a = _model(seed)
    return a, copy.deepcopy(a)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("threshold", [0.05, 1.0, 1e6])
def test_norm_clip_matches_torch_bitwise(norm_type: float, threshold: float) -> None:
    ours, theirs = _twins()
    _backward(ours, 0)
    _backward(theirs, 0)
    expected_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), threshold, norm_type=norm_type)
    stats = NormClip(threshold, norm_type)(list(ours.parameters()))
    assert torch.equal(stats.norm, expected_norm)
    for a, b in zip(_grads(ours), _grads(theirs)):
        assert torch.equal(a, b)
    assert bool(stats.resolved()[1]) == (expected_norm.item() > threshold)
    assert stats.resolved()[0].item() == pytest.approx(min(expected_norm.item(), threshold), rel=1e-5)


def test_value_clip_matches_torch() -> None:
    ours, theirs = _twins()
    _backward(ours, 0)
    _backward(theirs, 0)
    torch.nn.utils.clip_grad_value_(theirs.parameters(), 0.01)
    stats = ValueClip(0.01)(list(ours.parameters()))
    for a, b in zip(_grads(ours), _grads(theirs)):
        assert torch.equal(a, b)
    assert stats.resolved()[1].item() == 1.0
    expected_post = torch.linalg.vector_norm(torch.cat([g.flatten() for g in _grads(theirs)]))
    assert stats.resolved()[0].item() == pytest.approx(expected_post.item(), rel=1e-5)


def test_percentile_clip_matches_autoclip_quantile_clip() -> None:
    ours, theirs = _twins()
    clipper = PercentileClip(percentile=30, history=7, cap=math.inf)
    reference = QuantileClip(list(theirs.parameters()), quantile=0.3, history_length=7, global_threshold=True)
    clipped_steps = 0
    for step in range(25):
        scale = 3.0 if step % 6 == 5 else 1.0  # occasional spikes so that clipping happens
        _backward(ours, step, scale)
        _backward(theirs, step, scale)
        reference.step()
        stats = clipper(list(ours.parameters()))
        clipped_steps += int(stats.resolved()[1].item())
        for a, b in zip(_grads(ours), _grads(theirs)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert clipped_steps > 5


def test_zclip_matches_reference_zclip() -> None:
    ours, theirs = _twins()
    clipper = ZClip(alpha=0.9, z_threshold=2.0, warmup_steps=5, cap=math.inf)
    reference = ReferenceZClip(alpha=0.9, z_thresh=2.0, warmup_steps=5, max_grad_norm=None)
    clipped_steps = 0
    for step in range(40):
        scale = 4.0 if step in (12, 20, 21, 33) else 1.0
        _backward(ours, step, scale)
        _backward(theirs, step, scale)
        expected_norm = reference.step(theirs)
        stats = clipper(list(ours.parameters()))
        assert stats.norm.item() == pytest.approx(expected_norm, rel=1e-5)
        clipped_steps += int(stats.resolved()[1].item())
        for a, b in zip(_grads(ours), _grads(theirs)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert reference.mean == pytest.approx(clipper._mean.item(), rel=1e-5)
    assert clipped_steps >= 3


def _agc_reference(weights: list[np.ndarray], grads: list[np.ndarray], factor: float, eps: float) -> list[np.ndarray]:
    """Brock et al.'s unitwise rule written out row by row in float64."""
    out = []
    for w, g in zip(weights, grads):
        w2 = w.reshape(len(w), -1) if w.ndim > 1 else w.reshape(1, -1)
        g2 = g.reshape(len(g), -1) if g.ndim > 1 else g.reshape(1, -1)
        new = np.empty_like(g2)
        for r in range(len(g2)):
            max_norm = max(math.sqrt(float((w2[r] ** 2).sum())), eps) * factor
            norm = math.sqrt(float((g2[r] ** 2).sum()))
            new[r] = g2[r] * (max_norm / max(norm, 1e-6)) if norm > max_norm else g2[r]
        out.append(new.reshape(g.shape))
    return out


def test_agc_matches_float64_reference() -> None:
    model = _model()
    _backward(model, 0, scale=2.0)
    weights = [p.detach().double().numpy() for p in model.parameters()]
    expected = _agc_reference(weights, [g.double().numpy() for g in _grads(model)], 0.01, 1e-3)
    stats = AGC(clip_factor=0.01, eps=1e-3, cap=math.inf)(list(model.parameters()))
    assert stats.resolved()[1].item() == 1.0
    for got, want in zip(_grads(model), expected):
        np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("clipper", [PercentileClip(cap=0.5), ZClip(cap=0.5), AGC(clip_factor=100.0, cap=0.5)])
def test_adaptive_clippers_cap_the_first_steps(clipper) -> None:
    model = _model()
    _backward(model, 0, scale=10.0)
    stats = clipper(list(model.parameters()))
    assert stats.norm.item() > 0.5
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in _grads(model)]))
    assert total.item() == pytest.approx(0.5, rel=1e-4)
    assert stats.threshold.item() == 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e19])
@pytest.mark.parametrize("method", list(ClipMethod))
def test_clipper_zeroes_nonfinite_step(method: ClipMethod, bad: float) -> None:
    model = _model()
    _backward(model, 0)
    first = next(model.parameters())
    first.grad.view(-1)[: 128 if bad == 1e19 else 1] = bad  # 1e19 x 128 overflows the float32 norm
    stats = make_clipper({"method": method})(list(model.parameters()))
    assert not math.isfinite(stats.norm.item())
    assert stats.finite.item() == 0.0
    assert stats.resolved()[1].item() == 0.0
    for g in _grads(model):
        assert torch.count_nonzero(g) == 0


def test_percentile_window_ignores_nonfinite_steps() -> None:
    model = _model()
    clipper = PercentileClip(percentile=100, history=10, cap=math.inf)
    _backward(model, 0)
    clipper(list(model.parameters()))
    first_norm = clipper._window[0].item()
    _backward(model, 1)
    next(model.parameters()).grad.view(-1)[0] = math.inf
    clipper(list(model.parameters()))
    _backward(model, 2, scale=5.0)
    stats = clipper(list(model.parameters()))
    # The threshold is the max of the finite history only: the first step's norm.
    assert stats.threshold.item() == pytest.approx(first_norm)


def test_noclip_measures_without_changing_grads() -> None:
    ours, theirs = _twins()
    _backward(ours, 0, 10.0)
    _backward(theirs, 0, 10.0)
    stats = NoClip()(list(ours.parameters()))
    assert stats.resolved()[1].item() == 0.0 and math.isinf(stats.threshold.item())
    for a, b in zip(_grads(ours), _grads(theirs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"method": "norm", "threshold": 0}, "clip.threshold"),
        ({"method": "norm", "threshold": -1.0}, "clip.threshold"),
        ({"method": "value", "threshold": math.inf}, "clip.threshold"),
        ({"method": "percentile", "percentile": 0}, "clip.percentile"),
        ({"method": "percentile", "percentile": 150}, "clip.percentile"),
        ({"method": "percentile", "history": 0}, "clip.history"),
        ({"method": "zclip", "alpha": 1.0}, "clip.alpha"),
        ({"method": "agc", "cap": 0}, "clip.cap"),
        ({"method": "nrom"}, "clip.method"),
        ({"method": "norm", "treshold": 1.0}, "clip"),
    ],
)
def test_make_clipper_rejects_bad_values(config: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_clipper(config)
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_percentile_window_quantile_equals_torch_nanquantile_bitwise(n: int) -> None:
    # The window's quantile avoids nanquantile (a host read inside it on some torch releases).
    generator = torch.Generator().manual_seed(n)
    for nans in sorted({0, 1, n // 2, n}):
        values = torch.rand(n, generator=generator) * 10
        values[torch.randperm(n, generator=generator)[:nans]] = math.nan
        for q in (0.0, 0.1, 0.3, 0.5, 0.9, 1.0):
            ours, theirs = _nanquantile(values, q), torch.nanquantile(values, q)
            assert torch.equal(ours, theirs) or (ours.isnan() and theirs.isnan()), (n, nans, q)


def test_clipper_class_answers_what_recommend_and_export_ask_of_each_method() -> None:
    """A method's global-norm reading and export snippet live on its Clipper, nowhere else."""
    for method in ClipMethod:
        cls = clipper_class(method.value)
        assert cls.method is method
        config = dataclasses.asdict(clip_schema(method)())
        threshold = cls.global_threshold(config)
        assert threshold == (config["threshold"] if method is ClipMethod.norm else None)
        assert cls.bounds_global_norm is (method in (ClipMethod.norm, ClipMethod.none))
        assert (cls.torch_snippet(config) is not None) is (method in (ClipMethod.norm, ClipMethod.value))


def test_clipper_subclass_registers_its_method_once() -> None:
    """Defining a ``Clipper`` subclass is what makes a method available; a second one is refused."""
    assert {clipper_class(m) for m in ClipMethod} == {NoClip, NormClip, ValueClip, PercentileClip, ZClip, AGC}
    with pytest.raises(TypeError, match="'norm' has two implementations"):

        class AnotherNorm(NormClip):
            method = ClipMethod.norm

    assert clipper_class("norm") is NormClip


def test_clipper_of_each_method_lives_in_the_module_named_after_it() -> None:
    """One module per method (``sweeper/clipping/<name>.py``), each found by the package on import."""
    for method in ClipMethod:
        assert clipper_class(method).__module__ == f"clipsweep.clipping.{method.value}"
