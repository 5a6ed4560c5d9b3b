"""``clipsweep recommend | export | report | calibrate`` on a real sweep's SQLite study and MLflow store."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import SWEPT_STUDY, TINY, load_study, mlflow_runs
from optuna.trial import TrialState

from clipsweep.cli import main
from clipsweep.names import PARENT_RUN_ATTR
from clipsweep.recommend import RecommendSettings, recommend

STUDY = SWEPT_STUDY


@pytest.fixture
def in_swept(swept: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(swept)
    return swept


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipsweep", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=os.environ
    )


def test_recommend_command_validates_and_logs_to_the_parent_run(in_swept: Path, capsys) -> None:
    assert main(["recommend", "--study", STUDY, "--validate", "1"]) == 0
    out = capsys.readouterr().out
    assert "recommended: clip=norm clip.threshold=" in out and "validation on seeds [1]" in out
    client, runs = mlflow_runs(in_swept)
    parent_id = load_study(in_swept, STUDY).user_attrs[PARENT_RUN_ATTR]
    parent = client.get_run(parent_id)
    assert {"validate/recommended_mean", "validate/best_mean"} <= set(parent.data.metrics)
    validation_runs = [r for r in runs if r.data.tags.get("clipsweep.role") == "validate"]
    study = load_study(in_swept, STUDY)
    rec = recommend(study)
    same = rec.config == rec.best.config  # then one run answers for both
    expected = ["validate-recommended-seed1"] if same else ["validate-best-seed1", "validate-recommended-seed1"]
    assert sorted(r.info.run_name for r in validation_runs) == expected
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in validation_runs)


def test_export_command_yaml_reproduces_the_exported_trial_with_clip_best(in_swept: Path, capsys) -> None:
    # The default preset searched the learning rate with the threshold: both must travel.
    out = in_swept / "conf" / "clip" / "best.yaml"
    assert main(["export", "--study", STUDY, "--which", "best", "--out", str(out.relative_to(in_swept))]) == 0
    assert "exported the best clip config" in capsys.readouterr().err
    exported = yaml.safe_load(out.read_text())
    study = load_study(in_swept, STUDY)
    best = study.best_trial
    assert exported["clip"]["threshold"] == best.params["clip.threshold"]
    assert exported["optim"]["lr"] == best.params["optim.lr"]
    client, runs_before = mlflow_runs(in_swept)
    artifacts = {a.path for a in client.list_artifacts(study.user_attrs[PARENT_RUN_ATTR], "export")}
    assert "export/best.yaml" in artifacts

    # The README's way: the command in the file's header (./conf is on the search path, so
    # `clip=best` finds the exported file) trains the same trial again, to the last digit on CPU.
    (command,) = [
        line[len("# reproduce: ") :] for line in out.read_text().splitlines() if line.startswith("# reproduce")
    ]
    assert command.startswith("clipsweep run ") and command.endswith(" clip=best")
    done = _cli(*command.split()[1:], cwd=in_swept)
    assert done.returncode == 0, done.stderr
    _, runs = mlflow_runs(in_swept)
    (rerun,) = [r for r in runs if r.info.run_id not in {b.info.run_id for b in runs_before}]
    assert float(rerun.data.params["optim.lr"]) == best.params["optim.lr"]
    assert rerun.data.metrics["val/loss"] == pytest.approx(best.value, rel=1e-6)


@pytest.mark.parametrize(
    ("named", "printed_dirs", "reproduce_dirs"),
    [
        (("--config-dir", "mine"), "--config-dir mine 'hydra.searchpath=[file://multirun/",
         "--config-dir mine 'hydra.searchpath=[file://conf]' "),
        # Named on the search path instead: kept there, beside the dir that holds the clip file.
        (("hydra.searchpath=[file://mine]",), "--config-dir multirun/", "'hydra.searchpath=[file://mine]' "),
    ],
)  # fmt: skip
def test_sweep_from_a_users_config_dir_prints_commands_that_reproduce_the_trial(
    named: tuple[str, ...],
    printed_dirs: str,
    reproduce_dirs: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The user's own group (``--config-dir mine model=small``) and the file holding ``clip/best.yaml``
    are two config dirs: the sweep's "train with it" line and the export's reproduce line name both."""
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "small.yaml").write_text(
        "defaults:\n  - /schema/model@_here_: rnn\n  - _self_\ncell: gru\n"
    )
    monkeypatch.chdir(tmp_path)
    args = (*named, "model=small", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=own")
    # On the CPU (a fixed override the commands carry): cuDNN does not promise bit-equal reruns.
    assert main(["sweep", *TINY, *args, "train.device=cpu"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "train with it: " in x]
    printed = line.split("train with it: ")[1]
    assert printed.startswith(f"clipsweep run {printed_dirs}")
    assert printed.endswith(" model=small train.device=cpu clip=best")
    assert main(["export", "--out", "conf/clip/mine.yaml"]) == 0  # the storage's only study
    reproduce = capsys.readouterr().err.split("reproduce: ")[1].strip()
    assert reproduce.startswith(f"clipsweep run {reproduce_dirs}")
    assert reproduce.endswith(" model=small train.device=cpu clip=mine")
    exported = yaml.safe_load((tmp_path / "conf" / "clip" / "mine.yaml").read_text())
    study = load_study(tmp_path, "own")
    (trial,) = [t for t in study.trials if t.params.get("clip.threshold") == exported["clip"]["threshold"]]
    for command in (printed, reproduce):  # as the shell hands them over
        _, before = mlflow_runs(tmp_path)
        assert main(shlex.split(command)[1:]) == 0
        _, runs = mlflow_runs(tmp_path)
        (rerun,) = [r for r in runs if r.info.run_id not in {b.info.run_id for b in before}]
        assert rerun.data.params["model.cell"] == "gru"  # the user's group, not the default LSTM
        assert rerun.data.metrics["val/loss"] == pytest.approx(trial.value, rel=1e-6)


def test_export_command_json_by_study_and_by_parent_run_id(in_swept: Path, capsys) -> None:
    assert main(["export", "--study", STUDY, "--format", "json", "--which", "recommended"]) == 0
    by_study = json.loads(capsys.readouterr().out)
    study = load_study(in_swept, STUDY)
    recommendation = recommend(study, RecommendSettings())
    expected = recommendation.clip
    assert by_study["clip"] == expected and by_study["params"] == {"optim.lr": recommendation.params["optim.lr"]}
    assert by_study["source"]["study"] == STUDY and by_study["source"]["which"] == "recommended"
    assert by_study["source"]["trial"] == recommendation.trial.number

    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    assert main(["export", "--run-id", parent_id, "--format", "json", "--which", "recommended"]) == 0
    assert json.loads(capsys.readouterr().out)["clip"] == expected


def test_report_command_prints_the_table_and_writes_the_figure(in_swept: Path, capsys) -> None:
    assert main(["report", "--study", STUDY, "--png", "norms.png"]) == 0
    out = capsys.readouterr().out
    assert "top 4 of 4 completed trials" in out and "recommended: clip=norm" in out
    assert (in_swept / "norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_without_study_takes_the_storages_only_study_and_refuses_to_guess_among_two(
    swept: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # The default sweep names its study by when it started: nobody types that to read it back.
    for store in ("clipsweep.db", "mlflow.db"):
        shutil.copy(swept / store, tmp_path / store)
    monkeypatch.chdir(tmp_path)
    assert main(["report"]) == 0
    assert "recommended: clip=norm" in capsys.readouterr().out
    assert (tmp_path / f"{STUDY}-grad-norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'clipsweep.db'}")
    assert main(["recommend"]) == 2
    assert (
        f"--study=None is not allowed: the name of a study in sqlite:///clipsweep.db: one of ['{STUDY}', 'other']"
        in (capsys.readouterr().err)
    )


def test_trials_command_lists_every_trial_as_table_json_and_csv(in_swept: Path, capsys) -> None:
    study = load_study(in_swept, STUDY)
    assert main(["trials", "--study", STUDY, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["number"] for r in rows] == [t.number for t in study.trials]
    for row, trial in zip(rows, study.trials):
        assert row["state"] == trial.state.name and row["value"] == trial.value
        assert row["params.clip.threshold"] == trial.params["clip.threshold"]
        assert row["mlflow_run_id"] == trial.user_attrs["mlflow_run_id"] and 0 <= row["clip_fraction"] <= 1
    assert main(["trials", "--study", STUDY]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:4] == ["number", "state", "outcome", "value"]
    assert table.rstrip().endswith(f"{sum(t.state == TrialState.COMPLETE for t in study.trials)} completed")
    assert main(["trials", "--study", STUDY, "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(study.trials) + 1


def test_calibrate_command_prints_the_threshold_and_writes_a_clip_file(tmp_path: Path) -> None:
    (tmp_path / "mine" / "model").mkdir(parents=True)  # a user's config dir, as `run` and `sweep` accept it
    (tmp_path / "mine" / "model" / "small.yaml").write_text("defaults:\n  - /schema/model@_here_: rnn\n  - _self_\n")
    args = ("--config-dir", "mine", "model=small", *TINY, "train.steps=40", "--budget", "1", "--grid", "4")
    done = _cli("calibrate", *args, "--out", "conf/clip/calibrated.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "calibrated: clip=norm clip.threshold=" in done.stdout and "pilot: 10 steps" in done.stdout
    threshold = yaml.safe_load((tmp_path / "conf" / "clip" / "calibrated.yaml").read_text())["clip"]["threshold"]
    assert f"clip.threshold={threshold:.4g}" in done.stdout
    # How to train with it: the model and task it was calibrated for, from both config dirs.
    train = "train with it: clipsweep run --config-dir mine 'hydra.searchpath=[file://conf]' model=small "
    assert train in done.stdout and done.stdout.rstrip().endswith(" train.steps=40 clip=calibrated")
    _, runs = mlflow_runs(tmp_path)
    (pilot,) = [r for r in runs if r.data.tags.get("clipsweep.role") == "calibrate"]
    assert pilot.info.status == "FINISHED" and pilot.data.metrics["calibrate/threshold"] == threshold
    spent = int(pilot.data.metrics["calibrate/steps"])
    assert 10 < spent <= 40 and f"cost: {spent} optimizer steps" in done.stdout
    bad = _cli("calibrate", "model.hidden_size=-3", cwd=tmp_path)
    assert bad.returncode == 2 and "model" in bad.stderr and bad.stderr.count("\n") == 1
