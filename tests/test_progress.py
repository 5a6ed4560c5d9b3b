"""Progress: one line per evaluation in a log, a tqdm bar on a terminal, ETAs from the rate so far."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from clipsweep.progress import RunProgress, duration, eta, sweep_eta


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_writes_one_line_per_evaluation_when_not_a_terminal() -> None:
    log, terminal = io.StringIO(), io.StringIO()
    progress = RunProgress(100, "trial-3", terminal=terminal, log=log)
    for done in (10, 20, 30, 40, 50):
        progress.window(done, 0.5, 1.25)
    progress.evaluated(50, 0.5, 1.25, {"val/loss": 0.25, "val/accuracy": 0.875})
    progress.evaluated(100, 0.4, 1.0, {"val/loss": 0.2})
    progress.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and terminal.getvalue() == ""
    assert lines[0].startswith("[trial-3] step 50/100 | train/loss 0.5 | grad norm 1.25 | val/loss 0.25 | val/accuracy")
    assert lines[0].split(" | ETA ")[1].endswith(" s") and lines[1].endswith("| ETA 0 s")


def test_progress_draws_a_bar_on_a_terminal_and_no_lines() -> None:
    log, terminal = io.StringIO(), Terminal()
    progress = RunProgress(100, "run", terminal=terminal, log=log)
    progress.window(40, 0.5, 1.25)
    progress.evaluated(50, 0.5, 1.25, {"val/loss": 0.25})
    progress.close()
    drawn = terminal.getvalue()
    assert log.getvalue() == "" and "run" in drawn and "50/100" in drawn and "val/loss 0.25" in drawn


def test_progress_eta_is_the_rate_so_far() -> None:
    assert eta(10.0, 25, 100) == "30 s" and eta(0.0, 0, 100) == "?" and eta(5.0, 100, 100) == "0 s"
    assert (duration(89), duration(150), duration(7200)) == ("89 s", "2.5 min", "2.0 h")


def test_progress_sweep_eta_is_mean_trial_time_times_batches_left() -> None:
    start = datetime(2026, 11, 28, 12, 0, 0)

    def trial(state: TrialState, seconds: float | None) -> object:
        done = None if seconds is None else start + timedelta(seconds=seconds)
        made = create_trial(
            state=state,
            value=0.1 if state == TrialState.COMPLETE else None,
            params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            intermediate_values={1: 0.2} if state == TrialState.PRUNED else {},
        )
        made.datetime_start, made.datetime_complete = start, done
        return made

    assert sweep_eta([trial(TrialState.RUNNING, None)], 10, 1) == "?"
    finished = [trial(TrialState.COMPLETE, 40), trial(TrialState.PRUNED, 20), trial(TrialState.FAIL, 500)]
    assert sweep_eta(finished, 10, 1) == "4.0 min"  # 8 left x 30 s (failed trials are retried, not timed)
    assert sweep_eta(finished, 10, 4) == "60 s"  # in batches of 4: 2 batches
    assert sweep_eta(finished, 2, 1) == "0 s"
