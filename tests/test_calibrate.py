"""Calibration: a real pilot logged to a real MLflow store, the grid anchored on its norms (checked against
numpy), successive halving that spends its budget and keeps what a direct run of each arm says is better."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from clipsweep.calibrate import Arm, CalibrateSettings, calibrate
from clipsweep.errors import ConfigError
from clipsweep.tracker import NullTracker
from clipsweep.tracking import make_tracker
from clipsweep.training import build, train

TINY = ("model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8", "train.eval_every=10")


def test_calibrate_anchors_the_grid_on_the_pilots_norms_and_spends_its_budget(config, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = config(*TINY, "train.steps=100", "optim.lr=0.2", "tracking.enabled=true", f"tracking.uri={uri}")
    settings = CalibrateSettings(budget=1.0, pilot_share=0.2, grid=4, spread=2.0, shift=0.5, transient=0.2)
    tracker = make_tracker(uri, "clipsweep", True)
    calibration = calibrate(base, settings, tracker)
    tracker.flush()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert float(run.data.params["optim.lr"]) == pytest.approx(0.2)  # the pilot runs at the configured rate
    assert run.data.params["clip.method"] == "norm" and float(run.data.params["clip.threshold"]) == 10.0
    assert run.data.tags["clipsweep.role"] == "calibrate"
    text = Path(client.download_artifacts(tracker.run_id, "telemetry/steps.csv", str(tmp_path))).read_text()
    norms = [float(r["grad/norm"]) for r in csv.DictReader(io.StringIO(text)) if int(r["step"]) >= 4]
    assert calibration.pilot.steps == 20 and calibration.histogram.count == len(norms) == 16
    median = np.percentile(norms, 50)
    expected = median * np.logspace(-1, 1, 4) / 10**0.5  # two decades, centred half a decade below the median
    thresholds = [a.threshold for a in calibration.arms]
    assert thresholds == pytest.approx(expected, rel=calibration.histogram.relative_error + 2e-3)

    # Rungs of 4 and 2 arms; the finalists' runs go on from r to 2r steps: 4r + 2r <= 80 after the pilot's 20.
    assert [len(a.scores) for a in calibration.arms].count(2) == 2
    assert calibration.steps == 20 + 2 * 13 + 2 * 26 <= 100
    finalists = [a for a in calibration.arms if len(a.scores) == 2]
    resolved = OmegaConf.to_container(base, resolve=True)
    forecasts = {}
    for arm in finalists:  # the oracle: each finalist trained straight through, as a user would
        resolved |= {"clip": {"method": "norm", "threshold": arm.threshold, "norm_type": 2.0}}
        curve = []
        for steps in (6, 13, 19, 26):  # each rung's middle and end
            resolved["train"] |= {"steps": steps, "eval_every": steps}
            curve.append((steps, train(build(OmegaConf.create(resolved)), NullTracker()).val["val/loss"]))
        assert arm.curve == [(t, pytest.approx(v, rel=1e-6)) for t, v in curve]
        assert arm.scores == [(t, pytest.approx(v, rel=1e-6)) for t, v in (curve[1], curve[3])]
        # The forecast: a power law through the points of the last doubling (13, 19, 26 steps),
        # least squares in float64, read at train.steps.
        late = np.array(curve[1:], dtype=np.float64)
        slope, intercept = np.polyfit(np.log(late[:, 0]), np.log(late[:, 1]), 1)
        forecasts[arm.threshold] = math.exp(intercept + slope * math.log(100))
        assert arm.forecast(100) == pytest.approx(forecasts[arm.threshold], rel=1e-6)
    assert calibration.threshold == min(forecasts, key=forecasts.get)
    for arm in calibration.arms:  # the others were ranked by their first rung's value
        if arm not in finalists:
            assert arm.forecast(100) == arm.scores[0][1]
    assert calibration.clip == {"method": "norm", "threshold": calibration.threshold, "norm_type": 2.0}
    assert "of the steps of a sweep with 2000 trial-steps" in calibration.describe(2000)


def test_arm_forecast_ranks_by_where_the_curve_is_heading() -> None:
    stalled = Arm(0.25, curve=[(50, 2.0), (100, 1.0), (150, 1.0), (200, 1.0)])
    steady = Arm(0.05, curve=[(50, 2.0), (100, 1.6), (150, 1.4), (200, 1.25)])
    assert steady.curve[-1][1] > stalled.curve[-1][1]  # behind at 200 steps ...
    assert steady.forecast(1200) < stalled.forecast(1200)  # ... ahead where the run ends
    # Only the last doubling counts (100-200 steps): its early drop from 2.0 does not carry the stalled arm.
    assert stalled.forecast(1200) == pytest.approx(1.0)
    # An exact power law is read off exactly; at the curve's end there is nothing to extrapolate.
    power = Arm(1.0, curve=[(t, 3.0 * t**-0.5) for t in (120, 180, 240)])
    assert power.forecast(960) == pytest.approx(3.0 * 960**-0.5)
    assert power.forecast(240) == pytest.approx(3.0 * 240**-0.5)
    # Accuracy is maximised: its badness is 1 - accuracy; a diverged arm is worst.
    accuracy = Arm(1.0, objective="val/accuracy", curve=[(100, 0.5), (150, 1 - 0.5 / 1.5), (200, 0.75)])
    assert accuracy.forecast(800) == pytest.approx(0.25 / 4)  # badness 50 / steps
    # Two points are one noisy difference: the first rung's arms are ranked by their last value.
    assert Arm(1.0, curve=[(25, 2.0), (51, 1.0)]).forecast(1000) == 1.0
    assert Arm(1.0, curve=[(100, 0.5), (200, math.nan)]).forecast(800) == math.inf


def test_calibrate_refuses_a_pilot_without_finite_norms(config) -> None:
    exploding = config(*TINY, "train.steps=30", "optim=sgd", "optim.lr=1e30")
    with pytest.raises(ValueError, match="recorded no finite gradient norm"):
        calibrate(exploding, CalibrateSettings(cap=1e30, pilot_share=0.5), NullTracker())


def test_calibrate_settings_rungs_halve_down_to_two() -> None:
    assert CalibrateSettings(grid=8, eta=2).rungs() == [8, 4, 2]
    assert CalibrateSettings(grid=9, eta=3).rungs() == [9, 3]
    assert CalibrateSettings(grid=2).rungs() == [2]
    assert all(math.isfinite(v) for v in CalibrateSettings().__dict__.values() if isinstance(v, float))


@pytest.mark.parametrize(
    ("options", "flag"),
    [({"budget": 0}, "--budget"), ({"pilot_share": 1}, "--pilot-share"), ({"grid": 1}, "--grid"),
     ({"spread": 0}, "--spread"), ({"eta": 1}, "--eta"), ({"cap": -1}, "--cap"), ({"transient": 1}, "--transient")],
)  # fmt: skip
def test_calibrate_settings_reject_bad_values(options: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"{flag}="):
        CalibrateSettings(**options)
