"""``tle compare``'s views: one row per cell (mean ± sd over seeds, the sweep table's ▲/▼ rule) by default for a
sweep, ``--runs`` for one row per run; the pretraining runs labelled as such in the curves."""

import json

import pytest
import yaml

from conftest import tle, tle_inprocess

pytestmark = pytest.mark.slow

NUMPY_BASE = {"backend": "numpy", "model": "mlp", "dataset": {"source": "digits:5-9", "train": 30},
              "train": {"epochs": 3, "batch_size": 16}, "export": {"onnx": False}}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    uri = f"sqlite:///{tmp / 'm.db'}"
    path = tmp / "views.yaml"
    path.write_text(yaml.safe_dump({
        "name": "views", "base": {**NUMPY_BASE, "tracking": {"experiment": "views"}},
        "pretrain": {"dataset": {"source": "digits:0-4", "train": None}, "train": {"seed": 0}},
        "axes": {"strategy": ["scratch", "transfer:all"], "train.seed": [0, 1, 2]}}))
    sweep = json.loads(tle("--quiet", "sweep", path, "--tracking-uri", uri, "--format", "json", check_rc=0).stdout)
    return uri, tmp, sweep


def test_compare_of_a_sweep_prints_one_row_per_cell_with_mean_and_sd(swept):
    uri, _, sweep = swept
    data = json.loads(tle("compare", "--sweep", "views", "--tracking-uri", uri, "--format", "json", check_rc=0).stdout)
    cells = {(c["role"], c["strategy"]): c for c in data["cells"]}
    assert sorted(cells) == [("cell", "scratch"), ("cell", "transfer:all"), ("pretrain", "scratch")]
    moved, scratch = cells[("cell", "transfer:all")], cells[("cell", "scratch")]
    assert moved["n"] == scratch["n"] == 3 and cells[("pretrain", "scratch")]["n"] == 1
    # the same numbers as the sweep's own table, by the same rule
    table = {g["strategy"]: g for g in sweep["groups"]}
    for strategy, cell in (("scratch", scratch), ("transfer:all", moved)):
        assert cell["test_acc_mean"] == pytest.approx(table[strategy]["test_acc_mean"])
        assert cell["test_acc_sd"] == pytest.approx(table[strategy]["test_acc_sd"])
    assert moved["delta_vs_scratch"] == pytest.approx(table["transfer:all"]["delta_vs_scratch"])
    assert moved["beyond_seed_spread"] == table["transfer:all"]["beyond_seed_spread"]
    assert moved["seeds_compared"] == 3
    for k in ("jumpstart", "asymptote_gain", "auc_ratio"):
        assert moved[f"{k}_n"] == 3 and moved[f"{k}_sd"] is not None
    assert "jumpstart_mean" not in scratch

    text = tle("compare", "--sweep", "views", "--tracking-uri", uri, env={"COLUMNS": "120"}, check_rc=0).stdout
    body = [line for line in text.splitlines() if "numpy" in line]
    assert len(body) == 3, text  # one line per cell: no run name wrapping over lines
    row = next(line for line in body if "transfer:all" in line)
    assert f"{moved['test_acc_mean']:.3f} ± {moved['test_acc_sd']:.3f}" in row and "/3" in row
    assert any("pretraining" in line and "digits:0-4" in line for line in body)
    assert max(len(line) for line in text.splitlines()) <= 120

    md = tle("compare", "--sweep", "views", "--tracking-uri", uri, "--format", "markdown", check_rc=0).stdout
    assert md.count("| numpy |") == 3 and "jumpstart" in md and " ± " in md


def test_compare_runs_gives_one_row_per_run(swept):
    uri, _, _ = swept
    rows = json.loads(tle("compare", "--sweep", "views", "--runs", "--tracking-uri", uri, "--format", "json",
                          check_rc=0).stdout)["runs"]
    assert len(rows) == 7 and all("run_id" in r for r in rows)
    proc = tle_inprocess("compare", "--sweep", "views", "--runs", "--cells", "--tracking-uri", uri)
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_the_pretraining_run_is_labelled_as_such_in_the_curves(swept):
    from PIL import Image

    uri, tmp, _ = swept
    png = tmp / "curves.png"
    tle("compare", "--sweep", "views", "--tracking-uri", uri, "--curves", png, check_rc=0)
    legend = Image.open(png).text["Legend"]
    assert legend.startswith("numpy: ") and set(legend[len("numpy: "):].split(", ")) == {
        "scratch", "transfer:all", "pretraining"}
