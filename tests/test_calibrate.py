"""Calibration: a real pilot run logged to a real MLflow store, its threshold checked against numpy."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from sweeper.calibrate import CalibrateSettings, calibrate
from sweeper.errors import ConfigError
from sweeper.tracking import NullTracker, make_tracker

TINY = ("model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8", "train.eval_every=10")


def test_calibrate_threshold_is_the_percentile_of_the_pilots_steady_norms(config, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = config(*TINY, "train.steps=80", "optim.lr=0.2", "tracking.enabled=true", f"tracking.uri={uri}")
    tracker = make_tracker(uri, "clipsweep", True)
    calibration = calibrate(base, CalibrateSettings(lr_scale=0.5, percentile=80, transient=0.2), tracker)
    tracker.flush()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert float(run.data.params["optim.lr"]) == pytest.approx(0.1)  # the pilot's stable rate
    assert run.data.params["clip.method"] == "norm" and float(run.data.params["clip.threshold"]) == 10.0
    assert run.data.tags["clipsweep.role"] == "calibrate"
    text = Path(client.download_artifacts(tracker.run_id, "telemetry/steps.csv", str(tmp_path))).read_text()
    norms = [float(r["grad/norm"]) for r in csv.DictReader(io.StringIO(text)) if int(r["step"]) >= 8]
    assert calibration.histogram.count == len(norms) == 32
    expected = np.percentile(norms, 80)
    assert calibration.threshold == pytest.approx(expected, rel=calibration.histogram.relative_error + 1e-3)
    assert calibration.lr == 0.2 and calibration.examples == 40 * 8
    assert calibration.clip == {"method": "norm", "threshold": calibration.threshold, "norm_type": 2.0}
    assert "of a sweep with 800 trial-steps" in calibration.describe(800)


def test_calibrate_steps_override_shortens_the_pilot(config) -> None:
    calibration = calibrate(config(*TINY, "train.steps=200"), CalibrateSettings(steps=20), NullTracker())
    assert calibration.result.steps == 20 and calibration.histogram.count == 18


def test_calibrate_refuses_a_diverged_pilot(config) -> None:
    exploding = config(*TINY, "train.steps=30", "optim=sgd", "optim.lr=1e30")
    with pytest.raises(ValueError, match="diverged: its norms mean nothing; lower --lr-scale"):
        calibrate(exploding, CalibrateSettings(lr_scale=1.0, cap=1e30), NullTracker())


@pytest.mark.parametrize(
    ("options", "flag"),
    [({"lr_scale": 0}, "--lr-scale"), ({"percentile": 120}, "--percentile"), ({"cap": -1}, "--cap"),
     ({"transient": 1}, "--transient"), ({"steps": 2}, "--steps")],
)  # fmt: skip
def test_calibrate_settings_reject_bad_values(options: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"{flag}="):
        CalibrateSettings(**options)
