"""Bad inputs to the study commands and their neighbours fail before they start: exit 2, one line, no run.

The real CLI against real SQLite stores: in this process (conftest.tle_inprocess) where only the error line is
checked, in a process of its own where runs must happen; the example NumPy backend keeps those short.
"""

import csv
import io

import pytest
import yaml

from conftest import tle, tle_inprocess
from test_sweep_run import NUMPY_BASE, runs_of

pytest.importorskip("tle_numpy", reason="the example backend is not installed")


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (("--max-per-class", "1"), ("test split", "empty")),
    (("--max-per-class", "2"), ("test split", "empty")),
    (("--set", "dataset.test=0"), ("test split", "empty")),
    (("--set", "dataset.train=0"), ("training split", "0 image")),
    (("--experiment", ""), ("tracking.experiment", "empty")),
])
def test_a_run_that_cannot_be_run_creates_no_run(tmp_path, args, words):
    db = tmp_path / "m.db"
    proc = tle_inprocess("--quiet", "run", "--backend", "numpy", "--model", "mlp", "--dataset", "digits", "--epochs",
                         "1", *args, "--tracking-uri", f"sqlite:///{db}")
    one_line_error(proc, *words)
    assert not db.exists()  # MLflow was never touched


def test_an_empty_validation_split_trains_without_validation(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tle("--quiet", "run", "--backend", "numpy", "--model", "mlp", "--dataset", "digits", "--epochs", "1",
        "--set", "dataset.val=0", "--experiment", "noval", "--tracking-uri", uri, check_rc=0)
    (run,) = runs_of(uri, "noval")
    assert run.info.status == "FINISHED" and run.data.params["data.val_size"] == "0"
    assert run.data.metrics["test_acc"] > 0.5  # ten classes: chance is 0.1


@pytest.mark.parametrize("classes", ["0", "1", "-3"])
def test_plan_needs_two_classes(classes):
    one_line_error(tle_inprocess("plan", "--backend", "numpy", "--model", "mlp", "--classes", classes), "--classes")


def write_grid(tmp_path, **changes):
    grid = {"name": "inputs", "base": {**NUMPY_BASE, "tracking": {"experiment": "inputs"}},
            "axes": {"strategy": ["scratch"], "train.seed": [0, 1]}, **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.mark.parametrize("changes, args, words", [
    ({}, ("--rows", "NAME"), ("'NAME' is not an axis",)),
    ({}, ("--cols", "model"), ("'model' is not an axis",)),
    ({"axes": {"strategy": ["scratch"], "train.seed": [3, 3]}}, (), ("train.seed", "more than once")),
    ({"base": "missing.yaml"}, (), ("missing.yaml", "'base:' in")),
])
def test_a_sweep_that_cannot_be_laid_out_runs_nothing(tmp_path, changes, args, words):
    db = tmp_path / "m.db"
    proc = tle_inprocess("--quiet", "sweep", write_grid(tmp_path, **changes), *args, "--tracking-uri",
                         f"sqlite:///{db}")
    one_line_error(proc, *words)
    assert not db.exists()


def test_a_metric_no_cell_logged_is_an_error_not_a_table_of_dashes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = tle("--quiet", "sweep", write_grid(tmp_path), "--metric", "nope", "--tracking-uri", uri)
    one_line_error(proc, "'nope'", "test_acc")
    runs = runs_of(uri, "inputs")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)  # the parent is closed too


def test_an_output_path_under_a_file_is_refused_and_missing_folders_are_made(tmp_path):
    (tmp_path / "afile").write_text("")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    one_line_error(tle_inprocess("export", "0123456789abcdef", "-o", tmp_path / "afile" / "m.onnx", "--tracking-uri",
                                 uri), "is a file, not a folder")
    one_line_error(tle_inprocess("compare", "--curves", tmp_path / "afile" / "c.png", "--tracking-uri", uri),
                   "is a file, not a folder")
    one_line_error(tle_inprocess("init-study", "--backend", "numpy", "--plot", tmp_path / "afile" / "i.png",
                                 "--tracking-uri", uri), "is a file, not a folder")
    tle("--quiet", "init-study", "--backend", "numpy", "--seed", "0", "--samples", "10",
        "--plot", tmp_path / "new" / "dir" / "i.png", "--tracking-uri", uri, check_rc=0)
    assert (tmp_path / "new" / "dir" / "i.png").is_file()


def test_compare_of_nothing_is_an_error_and_a_failed_cell_says_what_it_was(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    grid = write_grid(tmp_path, axes={"dataset.source": ["digits:5-9", f"folder:{tmp_path / 'missing'}"]})
    tle("--quiet", "sweep", grid, "--tracking-uri", uri, check_rc=1)  # one cell fails: no such folder
    one_line_error(tle_inprocess("compare", "--experiment", "inputs", "--filter", "tags.backend = 'keras'",
                                 "--tracking-uri", uri), "no runs to compare", "tags.backend")
    proc = tle("compare", "--experiment", "inputs", "--format", "csv", "--tracking-uri", uri, check_rc=0)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert sorted(r["status"] for r in rows) == ["FAILED", "FINISHED"]
    for row in rows:
        assert (row["backend"], row["model"], row["strategy"]) == ("numpy", "mlp", "scratch"), row
        assert row["dataset"] in ("digits:5-9", f"folder:{tmp_path / 'missing'}"), row


def test_global_flags_after_the_command_and_jobs_auto(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = tle("sweep", write_grid(tmp_path), "--tracking-uri", uri, "--format", "json", check_rc=0)
    assert "--jobs auto: 2 worker(s)" in proc.stderr or "--jobs auto: 1 worker(s) (1 cores" in proc.stderr
    quiet = tle("sweep", write_grid(tmp_path), "--tracking-uri", uri, "--format", "json", "--quiet", check_rc=0)
    assert "--jobs auto" not in quiet.stderr and "reused" in quiet.stderr  # the same cells, found in the store
    one_line_error(tle_inprocess("sweep", write_grid(tmp_path), "--jobs", "many", "--tracking-uri", uri),
                   "--jobs 'many'")
    debug = tle("plan", "--backend", "numpy", "--model", "mlp", "--classes", "0", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
