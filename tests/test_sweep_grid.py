"""Sweep files and seed statistics, without any framework."""

import math

import pytest
import yaml

from conftest import tle, tle_inprocess
from tle.errors import UserError
from tle.studies.grid import load_grid
from tle.analysis.stats import Summary, difference


def write(tmp_path, body: dict, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


def test_product_over_dotted_keys(tmp_path):
    grid = load_grid(write(tmp_path, {
        "base": {"backend": "numpy", "model": "mlp", "dataset": {"source": "digits", "image_size": 8}},
        "axes": {"strategy": ["scratch", "transfer:block1"], "train.lr": [0.1, 0.01], "train.seed": [0, 1, 2]},
        "pretrain": {"dataset": {"source": "digits:0-4"}},
    }))
    cells = grid.cells()
    main = [c for c in cells if c.role == "cell"]
    assert len(main) == 12
    assert {(c.spec.strategy, c.spec.train.lr, c.spec.train.seed) for c in main} == {
        (s, lr, seed) for s in ("scratch", "transfer:block1") for lr in (0.1, 0.01) for seed in (0, 1, 2)}
    assert all(c.spec.dataset.image_size == 8 for c in cells)  # a dotted axis keeps the rest of the base
    assert grid.varying == ["strategy", "train.lr", "train.seed"]
    # One pretraining run per distinct pretraining spec (lr x seed), shared by its cells; scratch needs none.
    pre = [c for c in cells if c.role == "pretrain"]
    assert len(pre) == 6 and all(c.spec.dataset.source == "digits:0-4" and c.spec.strategy == "scratch" for c in pre)
    assert all((c.pretrain is None) == (c.spec.strategy == "scratch") for c in main)
    assert all(c.spec.weights == "none" for c in main if c.spec.strategy == "scratch")
    assert [c.index for c in cells] == list(range(len(cells))) and cells[0].role == "pretrain"


def test_explicit_cells_and_keys(tmp_path):
    grid = load_grid(write(tmp_path, {
        "base": {"backend": "numpy", "model": "mlp"},
        "cells": [{"strategy": "scratch", "init": "he_normal"}, {"strategy": "scratch", "init": "normal:1.0"}],
        "axes": {"train.seed": [0, 1]},
    }))
    cells = grid.cells()
    assert len(cells) == 4 and grid.varying == ["train.seed", "init"]
    assert len({c.key for c in cells}) == 4
    # The key ignores where a run is tracked and whether it checkpoints, nothing else.
    spec = cells[0].spec
    moved = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"experiment": "x", "uri": "y"})})
    assert moved.key() == spec.key()
    assert spec.model_copy(update={"train": spec.train.model_copy(update={"lr": 0.5})}).key() != spec.key()
    assert cells[0].spec.train.checkpoint is False  # sweeps rerun killed cells from the start


@pytest.mark.parametrize("body, words", [
    ({"base": {"backend": "numpy", "model": "mlp"}, "axis": {}}, "unknown sweep key"),
    ({"base": {"backend": "numpy", "model": "mlp"}, "axes": {"train.lr": 0.1}}, "non-empty list"),
    ({"base": {"backend": "numpy", "model": "mlp"}, "axes": {"train.epochs": [1, 0]}}, "train.epochs"),
    ({"base": {"backend": "numpy", "model": "mlp"}, "axes": {"tracking.experiment": ["a", "b"]}}, "one experiment"),
    ({"base": {"backend": "numpy", "model": "mlp", "weights": "pretrain"},
      "axes": {"strategy": ["transfer:block1"]}}, "no 'pretrain' section"),
])
def test_bad_sweep_files(tmp_path, body, words):
    with pytest.raises(UserError, match=words):
        load_grid(write(tmp_path, body))


def test_cli_dry_run_and_user_errors(tmp_path):
    good = write(tmp_path, {"name": "g", "base": {"backend": "numpy", "model": "mlp"},
                            "axes": {"strategy": ["scratch", "feature-extractor"]},
                            "pretrain": {"dataset": "digits:0-4"}})
    proc = tle("sweep", good, "--dry-run", check_rc=0)
    assert "3 cells" in proc.stdout and "pretrain #0" in proc.stdout
    bad_model = write(tmp_path, {"base": {"backend": "numpy", "model": "nope"}}, "bad.yaml")
    proc = tle_inprocess("sweep", bad_model, "--dry-run", check_rc=2)
    assert "has no model 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    (tmp_path / "broken.yaml").write_text("axes: [1, 2\n")
    proc = tle_inprocess("sweep", tmp_path / "broken.yaml", check_rc=2)
    assert "cannot parse" in proc.stderr and "Traceback" not in proc.stderr


def test_seed_statistics():
    s = Summary.of([0.8, 0.9, 1.0])
    assert s.n == 3 and math.isclose(s.mean, 0.9) and math.isclose(s.sd, 0.1)
    assert Summary.of([0.5]).sd == 0.0 and Summary.of([]).n == 0
    clear = difference([0.90, 0.92, 0.91], [0.50, 0.60, 0.55])
    assert clear.beyond_spread and clear.delta > 0.3 and clear.p_value < 0.01
    noise = difference([0.60, 0.80, 0.70], [0.55, 0.75, 0.65])
    assert not noise.beyond_spread and noise.p_value > 0.3
    one_seed = difference([0.9], [0.5])
    assert one_seed.beyond_spread and one_seed.p_value is None  # sd 0 on both sides: any gap exceeds it
