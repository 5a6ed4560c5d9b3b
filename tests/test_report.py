"""The sweep's figure: each trial's objective against its threshold, the recommendation marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from clipsweep.names import CONFIG_ATTR
from clipsweep.recommend import recommend
from clipsweep.report import objective_vs_threshold

THRESHOLD = FloatDistribution(0.01, 100.0, log=True)
LR = FloatDistribution(1e-3, 1.0, log=True)


def _study(tmp_path: Path) -> optuna.Study:
    study = optuna.create_study(study_name="fig", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    rng = np.random.default_rng(0)
    for i, threshold in enumerate(np.geomspace(0.01, 50, 12)):
        lr = float(10 ** rng.uniform(-3, 0))
        good = 0.05 <= threshold <= 0.5
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED if i in (10, 11) else TrialState.COMPLETE,
                value=None if i in (10, 11) else (1e-3 if good else 0.1) * (1 + 0.1 * rng.random()),
                intermediate_values={5: 0.2} if i in (10, 11) else {},
                params={"clip.threshold": float(threshold), "optim.lr": lr},
                distributions={"clip.threshold": THRESHOLD, "optim.lr": LR},
                user_attrs={
                    CONFIG_ATTR: {
                        "clip": {"method": "norm", "threshold": float(threshold), "norm_type": 2.0},
                        "optim": {"lr": lr},
                    }
                },
            )
        )
    return study


def test_report_objective_vs_threshold_marks_trials_and_the_recommendation(tmp_path: Path) -> None:
    study = _study(tmp_path)
    recommendation = recommend(study)
    figure = objective_vs_threshold(study.get_trials(), "fig", recommendation)
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_yscale() == "log"  # the values span two decades
    completed, pruned = axes.collections[0], axes.collections[1]
    assert len(completed.get_offsets()) == 10 and len(pruned.get_offsets()) == 2
    np.testing.assert_allclose(completed.get_array(), [t.params["optim.lr"] for t in study.trials[:10]])
    assert figure.axes[1].get_ylabel() == "optim.lr"  # the colour bar
    assert [line.get_xdata()[0] for line in axes.lines] == [recommendation.threshold]
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert f"recommended {recommendation.threshold:.3g}" in labels and "within tolerance" in labels
