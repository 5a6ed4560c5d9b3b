"""Progress: one line per evaluation in a log, a tqdm bar on a terminal, ETAs from the rate so far."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from clipsweep.names import REPEAT_OF_ATTR
from clipsweep.progress import BatchProgress, QuietProgress, RunProgress, duration, eta, sweep_eta


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
    repeat = trial(TrialState.COMPLETE, 0.01)
    repeat.user_attrs[REPEAT_OF_ATTR] = 0  # told at once, not trained: done, but not a duration
    assert sweep_eta([*finished, repeat], 11, 1) == "4.0 min"


def test_progress_batch_line_counts_endings_and_keeps_the_best_so_far() -> None:
    log = io.StringIO()
    progress = BatchProgress(20, ["trial-0", "trial-1", "trial-2"], log=log)
    progress.evaluated(5, 2, {"stopped": 1}, (0.25, 1))
    progress.evaluated(10, 1, {"stopped": 1, "diverged": 1}, (0.5, 0))  # trial-1 ended; its 0.25 stands
    progress.evaluated(20, 0, {"stopped": 1, "diverged": 1, "finished": 1}, (0.125, 0))
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("[batch of 3] step 5/20 | training 2, ended: 1 stopped | best val/loss 0.25 (trial-1)")
    assert "ended: 1 diverged, 1 stopped | best val/loss 0.25 (trial-1)" in lines[1]
    assert "training 0, ended: 1 diverged, 1 finished, 1 stopped | best val/loss 0.125 (trial-0) | ETA 0 s" in lines[2]


def test_progress_quiet_run_draws_and_prints_nothing(capsys) -> None:
    progress = QuietProgress()
    progress.window(10, 0.5, 1.0)
    progress.evaluated(10, 0.5, 1.0, {"val/loss": 0.2})
    progress.close()
    assert capsys.readouterr() == ("", "")
