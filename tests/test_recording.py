"""``sweeper/recording.py``: how a run ends is recorded the same whoever computes its steps."""

from __future__ import annotations

import math

from clipsweep.tracker import NullTracker
from clipsweep.training import build, train

SMALL = ("model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8")


def test_recording_a_run_stopped_before_its_first_window_still_reports_its_train_loss(config) -> None:
    # log_every=10 but the pruner stops the run at its first evaluation (step 5): the loss of those
    # five steps is what the run trained on, not NaN.
    setup = build(config(*SMALL, "train.steps=20", "train.eval_every=5", "tracking.log_every=10"))
    result = train(setup, NullTracker(), on_eval=lambda step, metrics: True)
    assert (result.status, result.steps) == ("stopped", 5)
    assert math.isfinite(result.train_loss) and result.train_loss > 0
    assert result.summary.steps == 5


def test_recording_an_evaluation_before_its_window_is_full_shows_the_steps_so_far(config, capsys) -> None:
    # eval_every=5, log_every=10: the line at step 5 showed "train/loss nan | grad norm nan". It must
    # show what a run whose window closes at step 5 shows for the same five steps.
    lines = {}
    for steps, log_every in ((5, 5), (10, 10)):
        setup = build(config(*SMALL, f"train.steps={steps}", "train.eval_every=5", f"tracking.log_every={log_every}"))
        train(setup, NullTracker())
        lines[log_every] = next(line for line in capsys.readouterr().out.splitlines() if " step 5/" in line)
    shown = [line.split(" | ")[1:4] for line in lines.values()]
    assert "nan" not in lines[10] and shown[0] == shown[1], lines
