"""The tracking contract every backend shares: what a logged config looks like, and the null backend."""

from __future__ import annotations

from clipsweep.tracker import NullTracker, flatten, masked


def test_masked_hides_the_tracking_password_and_keeps_everything_else() -> None:
    config = {"tracking": {"uri": "postgresql://clip:s3cret@db:5432/mlflow", "enabled": True}, "optim": {"lr": 0.1}}
    out = masked(config)
    assert "s3cret" not in str(out)
    assert out["tracking"]["uri"] == "postgresql://clip:***@db:5432/mlflow"
    assert out["optim"] == {"lr": 0.1} and out["tracking"]["enabled"] is True
    assert config["tracking"]["uri"].endswith("s3cret@db:5432/mlflow")  # the caller's config is not touched


def test_masked_leaves_a_config_without_tracking_alone() -> None:
    assert masked({"clip": {"threshold": 1.0}}) == {"clip": {"threshold": 1.0}}


def test_flatten_joins_nested_keys_with_dots_as_mlflow_params_are_filtered() -> None:
    nested = {"clip": {"method": "norm", "threshold": 0.5}, "model": {"cell": {"kind": "lstm"}}, "seed": 3}
    assert flatten(nested) == {"clip.method": "norm", "clip.threshold": 0.5, "model.cell.kind": "lstm", "seed": 3}


def test_null_tracker_has_no_run_and_says_tracking_is_off() -> None:
    tracker = NullTracker()
    tracker.start_run("r", {"a": 1}, {"t": "v"})
    tracker.log_metrics([("loss", 1.0, 0)])
    tracker.end_run()
    assert tracker.run_id is None
    assert tracker.describe() == "tracking disabled"
