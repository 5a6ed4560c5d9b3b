"""What a sweep leaves on its parent run: Optuna's figures, on a real study and a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from clipsweep.conclusion import _log_plots
from clipsweep.tracking import make_tracker

SPACE = {"clip.threshold": FloatDistribution(0.01, 10.0, log=True), "optim.lr": FloatDistribution(1e-3, 1.0, log=True)}


def _plots(tmp_path: Path, keys: tuple[str, ...]) -> set[str]:
    """The plots a parent run gets for a study of 8 completed trials over ``keys``."""
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    for i in range(8):
        params = {k: 0.01 * 1.5**i for k in keys}
        study.add_trial(create_trial(value=1.0 / (i + 1), params=params, distributions={k: SPACE[k] for k in keys}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = make_tracker(uri, "clipsweep", True)
    parent.start_run("sweep", {}, {})
    _log_plots(study, parent)
    parent.end_run()
    parent.flush()
    client = MlflowClient(tracking_uri=uri)
    return {a.path for a in client.list_artifacts(parent.run_id, "plots")}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (("clip.threshold",), {"optimization_history", "slice"}),
        (("clip.threshold", "optim.lr"), {"optimization_history", "param_importances", "parallel_coordinate", "slice"}),
    ],
    ids=["one-parameter", "two-parameters"],
)
def test_conclusion_plots_leave_out_importances_when_one_parameter_was_searched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: tuple[str, ...], expected: set[str]
) -> None:
    """Importances of a single parameter are 100% by definition (a forest fit costing seconds), and its
    parallel coordinates repeat the slice plot: a one-parameter sweep does without both."""
    monkeypatch.chdir(tmp_path)  # the run's artifacts go beside its store, as in a sweep's directory
    assert _plots(tmp_path, keys) == {f"plots/{name}.png" for name in expected}
