"""Browser check: what a user sees in the MLflow UI after a sweep, in headless Chromium.

Runs a small sweep in a temporary directory, starts ``clipsweep ui`` on it, and loads the two links
the sweep prints, after choosing "Model training" in MLflow's sidebar once as README says: the
experiment's runs table (expanding the parent run) and the parent run's page.
Checks that the runs table shows the parent with its trials nested under it and that the parent's
page shows the recommendation; saves a screenshot of each (``--screenshots DIR``). Also reports what
the experiment's bare link opens on (MLflow decides that from a browser setting, not the run data).

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install 'clipsweep[browser]'``:

    python benchmarks/ui_check.py [--screenshots benchmarks/screenshots]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

TINY = [
    "model.hidden_size=8", "task.seq_len=10", "task.val_size=32", "train.batch_size=8", "train.steps=20",
    "train.eval_every=5", "tracking.log_every=10", "search=threshold", "hydra.sweeper.n_trials=4",
    "hydra.sweeper.study_name=ui-check",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,900", "--hide-scrollbars"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "chromium"
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))


def _load(driver: Any, url: str, text: str, timeout: float = 60) -> str:
    driver.get(url)
    deadline = time.monotonic() + timeout
    while text not in driver.page_source and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)  # the rest of the page's requests
    return driver.page_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        sweep = [sys.executable, "-m", "clipsweep", "sweep", *TINY]
        done = subprocess.run(sweep, cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
        client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("clipsweep")
        runs = client.search_runs([experiment.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("clipsweep.role") == "sweep")
        recommended = parent.data.tags["clipsweep.recommended"]
        port = _free_port()
        store = f"sqlite:///{cwd / 'mlflow.db'}"
        ui = subprocess.Popen(
            [sys.executable, "-m", "clipsweep", "ui", "--port", str(port), "--tracking-uri", store],
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        driver = None
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            driver = _browser()
            results: dict[str, bool] = {}
            page = _load(driver, f"{base}/#/experiments/{experiment.experiment_id}", "Overview", timeout=20)
            opens_on = "the runs table" if "Training runs" in page else "GenAI's overview (traces)"
            # What README tells users to do once: MLflow keeps the choice in the browser.
            toggle = driver.find_element(By.XPATH, "//*[normalize-space(text())='Model training']")
            driver.execute_script("arguments[0].click()", toggle)  # under MLflow's first-visit popover
            time.sleep(1)
            page = _load(driver, f"{base}/#/experiments/{experiment.experiment_id}/runs", parent.info.run_name)
            results["runs table with the parent run"] = "Run Name" in page and parent.info.run_name in page
            driver.find_element(By.CSS_SELECTOR, "button[data-component-id$='runnamecellrenderer.tsx_46']").click()
            time.sleep(2)
            page = driver.page_source
            results["its 4 trials nested under it"] = all(f"trial-{n}" in page for n in range(4))
            if args.screenshots:
                args.screenshots.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.screenshots / "runs_table.png"))
            experiment_url = f"{base}/#/experiments/{experiment.experiment_id}"
            page = _load(driver, f"{experiment_url}/runs/{parent.info.run_id}", recommended)
            results[f"the parent's page with the recommendation ({recommended})"] = recommended in page
            if args.screenshots:
                driver.save_screenshot(str(args.screenshots / "parent_run.png"))
        finally:
            if driver is not None:
                driver.quit()
            ui.terminate()
            ui.wait(timeout=30)
    for what, ok in results.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    print(f"note: the experiment's bare link opens on {opens_on} (MLflow's sidebar toggle, kept in the browser)")
    if not all(results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
