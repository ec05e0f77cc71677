"""The MLflow UI as the comparison screen: a sweep over two backends, served by a real ``mlflow server`` on
127.0.0.1 and read in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium; no
browser is downloaded). The test sees the sweep's parent run, expands it to its nested cells, adds the
``val_acc`` and ``backend`` columns as a user would, and reads each cell's val_acc off the rendered page.

A screenshot is kept: ``<tmp_path>/mlflow-ui.png``, and a copy in ``$TLE_TEST_ARTIFACTS`` when that is set."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import tle

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("TLE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("TLE_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
EXPERIMENT = "ui-check"
SWEEP = {
    "name": EXPERIMENT,
    "base": {"dataset": {"source": "digits:5-9", "image_size": 32, "train": 20, "val": 20, "test": 20},
             "train": {"epochs": 1, "batch_size": 10}, "export": {"onnx": False},
             "tracking": {"experiment": EXPERIMENT}},
    "cells": [{"backend": "numpy", "model": "mlp"}, {"backend": "torch", "model": "vgg_small"}],
    "axes": {"train.seed": [0, 1]},
}


def _missing_browser():
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"no {path}: install Debian's {package} (apt-get install chromium chromium-driver) to run it"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


if _missing_browser():
    pytest.skip(f"MLflow UI browser test: {_missing_browser()}", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_store(uri):
    """Create the SQLite store now (under tle's lock), so the server and the sweep can start together."""
    import mlflow

    from tle.store.lock import store_lock

    with store_lock(uri):
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def _start_server(uri, tmp_path):
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", uri,
                             "--artifacts-destination", str(tmp_path / "server-artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc, base, tmp_path, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                if resp.status == 200 and resp.read().strip() == b"OK":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    log = (tmp_path / "mlflow-server.log").read_text(errors="replace")[-3000:]
    pytest.fail(f"mlflow server at {base} did not answer /health (rc={proc.poll()}):\n{log}")


def _stop(proc):
    """Stop the server and whatever workers it started: its own process group, which this test created."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass


def _browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1800,1000"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager never runs, nothing is downloaded.
    return webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                            options=options)


def _keep_screenshot(driver, tmp_path, name="mlflow-ui.png"):
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    if os.environ.get("TLE_TEST_ARTIFACTS"):
        dest = Path(os.environ["TLE_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / name)
    return shot


def _add_column(driver, wait, name):
    """Columns > search > tick the entry titled exactly ``name`` (the first: Parameters come before Tags)."""
    driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
    search = wait.until(lambda d: d.find_element(By.XPATH, "//input[@placeholder='Search columns']"))
    search.send_keys(name)
    entry = wait.until(lambda d: d.find_element(
        By.XPATH, f"//span[contains(@class, 'tree-title')][normalize-space(.)='{name}']"))
    entry.click()
    search.send_keys(Keys.ESCAPE)
    wait.until(lambda d: not d.find_elements(By.XPATH, "//input[@placeholder='Search columns']"))


VAL_ACC, BACKEND, RUN_NAME = "metrics.`val_acc`", "params.`backend`", "attributes.`Run Name`"  # ag-grid col-ids


def _row_cells(driver, run_id):
    """{column id: text} of one run's row (ag-grid splits a row between pinned and scrolled containers)."""
    cells = driver.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{run_id}'] [role=gridcell][col-id]")
    return {c.get_attribute("col-id"): c.text.strip() for c in cells}


def test_mlflow_ui_shows_a_two_backend_sweep_nested_with_val_acc(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = tmp_path / "ui-sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    _create_store(uri)
    server, base = _start_server(uri, tmp_path)  # boots while the sweep trains
    driver = None
    try:
        tle("--quiet", "sweep", path, "--jobs", "2", "--tracking-uri", uri, cwd=tmp_path, timeout=600, check_rc=0)

        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([exp.experiment_id], max_results=100)
        parent = next(r for r in runs if r.data.tags.get("tle.role") == "sweep")
        cells = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert sorted(r.data.tags["backend"] for r in cells.values()) == ["numpy", "numpy", "torch", "torch"]
        assert all("val_acc" in r.data.metrics for r in cells.values())

        _wait_healthy(server, base, tmp_path)
        driver = _browser(tmp_path)
        wait = WebDriverWait(driver, 60, poll_frequency=0.25)
        driver.get(f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")

        # The sweep is one top-level row: its cells are nested under it, hidden until it is expanded.
        parent_row = f"[role=row][row-id='{parent.info.run_id}']"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, parent_row))
        assert EXPERIMENT in " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, parent_row))
        for run_id in cells:
            assert not driver.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{run_id}']"), \
                "a nested cell is shown as a top-level run before its parent is expanded"
        driver.find_element(By.CSS_SELECTOR, f"{parent_row} [role=gridcell][col-id='{RUN_NAME}'] button").click()
        wait.until(lambda d: all(d.find_elements(By.CSS_SELECTOR, f"[role=row][row-id='{i}']") for i in cells))

        # What a user adds to compare backends: the val_acc and backend columns.
        for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):  # the assistant side panel
            try:
                button.click()
            except Exception:
                pass
        _add_column(driver, wait, "val_acc")
        _add_column(driver, wait, "backend")
        wait.until(lambda d: d.find_elements(By.XPATH, "//*[@role='columnheader'][normalize-space(.)='val_acc']"))

        def rows_read(d):
            rows = {i: _row_cells(d, i) for i in cells}
            return rows if all(r.get(VAL_ACC) and r.get(BACKEND) for r in rows.values()) else False

        try:
            rows = wait.until(rows_read)
        except TimeoutException:
            pytest.fail(f"val_acc cells not rendered; rows: {({i: _row_cells(driver, i) for i in cells})}")
        page = driver.find_element(By.TAG_NAME, "body").text
        for run_id, run in cells.items():
            row = rows[run_id]
            backend = run.data.tags["backend"]
            assert run.info.run_name in row[RUN_NAME], row  # "ui-check: seed=N backend=B model=M"
            assert row[BACKEND] == backend, row
            shown = float(row[VAL_ACC])
            assert shown == pytest.approx(run.data.metrics["val_acc"], abs=1e-3), (run.info.run_name, row)
        assert {"backend=numpy", "backend=torch"} <= {w for w in page.split() if w.startswith("backend=")}
    finally:
        try:
            if driver is not None:
                _keep_screenshot(driver, tmp_path)
                driver.quit()
        finally:
            _stop(server)
