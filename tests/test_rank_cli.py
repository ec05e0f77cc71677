"""``tle rank`` end to end: a real store, real pretraining (the numpy example backend), a real feature-extractor
sweep and the CLI (its main(), in this process; the features come from worker processes as always); and the user
errors it answers in one line before any run exists.

The source that ranks first is pretrained on all ten digits (the target's classes among them), not on digits
0-4: measured with these small backbones, a random network's features of digits 5-9 are as good as those of a
network pretrained on digits 0-4 (k-NN 0.939 for a random mlp against 0.92 pretrained; a random resnet_small's
linear probe 0.899 against 0.838-0.872 pretrained), so "pretrained on 0-4 ranks first" would not be true of the
features. The 0-4 networks are ranked beside it, and checked against the sweep.
"""

import json

import pytest
import yaml
from scipy import stats

from conftest import tle_inprocess

pytestmark = pytest.mark.slow

TARGET = "digits:5-9"
EPOCHS = {"all digits": ("digits", 8), "digits 0-4": ("digits:0-4", 8), "digits 0-4, 2 epochs": ("digits:0-4", 2)}


def client_for(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def all_runs(uri):
    client = client_for(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000) if ids else []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three numpy mlps pretrained in this process, and a 1-seed feature-extractor sweep of them on digits 5-9 (its
    cells in a worker process, as tle sweep runs them)."""
    from tle.contract.spec import build_spec
    from tle.run.runner import RunOptions, run_experiment
    from tle.studies.grid import load_grid
    from tle.studies.sweep import Executor, Sweep

    folder = tmp_path_factory.mktemp("rank")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    sources = {}
    for name, (dataset, epochs) in EPOCHS.items():
        spec = build_spec({"backend": "numpy", "model": "mlp", "dataset": {"source": dataset, "train": None},
                           "train": {"epochs": epochs, "batch_size": 32, "seed": 0}, "export": {"onnx": False},
                           "tracking": {"uri": uri, "experiment": "sources"}})
        result = run_experiment(spec, RunOptions(quiet=True))
        sources[name] = result
    grid = {"name": "fe-digits", "base": {"backend": "numpy", "model": "mlp", "dataset": TARGET,
                                          "strategy": "feature-extractor", "train": {"epochs": 5, "batch_size": 16},
                                          "export": {"onnx": False}, "tracking": {"experiment": "sweeps"}},
            "cells": [{"weights": f"runs:/{r.run_id}"} for r in sources.values()]}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(grid))
    assert Sweep(load_grid(folder / "sweep.yaml"), Executor("local", 1), tracking_uri=uri, quiet=True).run().ok
    return {"uri": uri, "env": {"MLFLOW_TRACKING_URI": uri}, "folder": folder, "sources": sources}


def candidates(world):
    return [f"numpy:mlp@runs:/{r.run_id}" for r in world["sources"].values()] + ["numpy:mlp@random"]


@pytest.fixture(scope="module")
def ranked(world):
    proc = tle_inprocess("rank", "--dataset", TARGET, "--candidates", ",".join(candidates(world)), "--against",
                         "fe-digits", "--experiment", "ranks", "--json", env=world["env"], check_rc=0)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # --json: one object on one line
    return json.loads(lines[0])


def test_pretrained_ranks_first_by_every_score_and_random_never(world, ranked):
    from tle.analysis.transferability import SCORES

    pretrained = f"numpy:mlp@runs:/{world['sources']['all digits'].run_id}"
    rows = ranked["candidates"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and ranked["by"] == "knn"
    for score in (*SCORES, "source_acc"):
        values = [(r["scores"][score], r["candidate"]) for r in rows if r["scores"][score] is not None]
        best = max(values)[1]
        if score != "source_acc":  # the source acc of a 10-class run is lower than that of a 5-class one
            assert best == pretrained, (score, values)
        assert best != "numpy:mlp@random", (score, values)
    random_row = next(r for r in rows if r["weights"] == "random")
    assert random_row["scores"]["nce"] is None and random_row["scores"]["source_acc"] is None  # no source head
    assert rows[0]["candidate"] == pretrained and rows[0]["scores"]["knn"] > 0.9
    assert set(ranked["score_seconds"]) == set(SCORES) and ranked["wall_seconds"] > 0


def test_one_finished_run_holds_the_ranking_with_the_split_of_tle_run(world, ranked):
    client = client_for(world["uri"])
    runs = [r for r in all_runs(world["uri"]) if r.data.tags.get("tle.role") == "rank"
            and r.data.tags.get("tle.rank") == ranked["name"]]
    assert [r.info.run_id for r in runs] == [ranked["run_id"]] and runs[0].info.status == "FINISHED"
    run = runs[0]
    # The same split as a tle run of the same data and seed: the sweep's cells (seed 0) logged this fingerprint.
    cells = [r for r in all_runs(world["uri"]) if r.data.tags.get("tle.role") == "cell"]
    assert {c.data.params["data.fingerprint"] for c in cells} == {run.data.params["data.fingerprint"]}
    assert json.loads(run.data.params["candidates"]) == candidates(world)
    for row in ranked["candidates"]:
        for score, value in row["scores"].items():
            if value is not None:
                assert run.data.metrics[f"c{row['index']}.{score}"] == pytest.approx(value, rel=1e-12)
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"ranking.md", "ranking.csv", "ranking.json", "ranking.png", "against.md"} <= files


def test_tau_equals_scipy_on_the_logged_numbers(world, ranked):
    """Kendall's tau logged per score equals scipy's on the ranking's logged scores and the sweep's logged test
    accuracies (the random candidate is not a cell of the sweep: feature-extractor needs pretrained weights)."""
    from tle.analysis.transferability import SCORES

    run = client_for(world["uri"]).get_run(ranked["run_id"])
    cells = {r.data.tags["weights"]: r.data.metrics["test_acc"]
             for r in all_runs(world["uri"]) if r.data.tags.get("tle.role") == "cell"}
    spelled = candidates(world)
    matched = [i for i, c in enumerate(spelled) if c.split("@", 1)[1] in cells]
    assert len(matched) == 3
    acc = [cells[spelled[i].split("@", 1)[1]] for i in matched]
    for score in SCORES:
        logged = [run.data.metrics[f"c{i}.{score}"] for i in matched]
        tau, p = stats.kendalltau(logged, acc)
        assert run.data.metrics[f"tau.{score}.feature-extractor"] == pytest.approx(tau, abs=1e-12), score
        assert run.data.metrics[f"tau_p.{score}.feature-extractor"] == pytest.approx(p, abs=1e-12), score
        assert run.data.metrics[f"wtau.{score}.feature-extractor"] == pytest.approx(
            stats.weightedtau(logged, acc).statistic, abs=1e-12)
    assert ranked["against"]["sweep"] == "fe-digits"


def test_a_rank_file_names_candidates_and_prints_markdown(world):
    sources = world["sources"]
    path = world["folder"] / "rank.yaml"
    path.write_text(yaml.safe_dump({
        "name": "from-file", "base": {"dataset": {"source": TARGET, "max_per_class": 60}, "train": {"seed": 1}},
        "axes": {"backend": ["numpy"], "model": ["mlp"], "weights": ["random"]},
        "candidates": [{"name": "ten digits", "candidate": f"numpy:mlp@runs:/{sources['all digits'].run_id}"}],
        "by": "logme"}))
    proc = tle_inprocess("--quiet", "rank", path, "--format", "markdown", "--experiment", "ranks", env=world["env"],
                         check_rc=0)
    lines = proc.stdout.splitlines()
    assert "from-file: 2 candidates on digits:5-9 by logme" in lines[0]
    assert lines[4].startswith("| 1 | ten digits |") and lines[5].startswith("| 2 | numpy:mlp@random |")
    assert "| LogME ▼ |" in lines[2] and "seconds (all candidates)" in lines[6]


@pytest.mark.parametrize("args, says", [
    (["--by", "accuracy"], "unknown score 'accuracy'"),
    (["--candidates", "nosuch:mlp@random"], "unknown backend 'nosuch'"),
    (["--candidates", "numpy-mlp@random"], "is not BACKEND:MODEL@WEIGHTS"),
    (["--candidates", "numpy:mlp"], "is not BACKEND:MODEL@WEIGHTS"),
    (["--candidates", "numpy:nosuch@random"], "has no model 'nosuch'"),
    (["--candidates", "numpy:mlp@/no/such/file.npz"], "does not exist"),
    (["--candidates", "numpy:mlp@runs:/0123456789abcdef"], "not found in the tracking store"),
    (["--against", "no-such-sweep"], "sweep 'no-such-sweep' not found"),
    (["--format", "html"], "unknown --format"),
    (["--dataset", "nosuch:1"], "unknown dataset source"),
])
def test_bad_input_exits_2_with_one_line_before_any_run(tmp_path, args, says):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["--dataset", TARGET, "--candidates", "numpy:mlp@random"]
    proc = tle_inprocess("rank", *base, *args, env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
    if (tmp_path / "mlflow.db").exists():
        assert all_runs(uri) == []


def test_images_a_candidate_cannot_take_exit_2_with_one_line_from_its_worker(tmp_path):
    """The data's shape is known once a worker loaded it: the worker's one line, still before any run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = tle_inprocess("--quiet", "rank", "--dataset", TARGET, "--candidates", "spyketorch:mozafari_small@random",
                         env={"MLFLOW_TRACKING_URI": uri})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("error: candidate spyketorch:mozafari_small@random: mozafari_small needs images "
                                   "of at least 16px, the data is 8x8; set --image-size 16")
    assert all_runs(uri) == []


def test_sweep_that_shares_no_candidate_is_refused(world):
    proc = tle_inprocess("rank", "--dataset", TARGET, "--candidates", "numpy:mlp3@random", "--against", "fe-digits",
                         env=world["env"])
    assert proc.returncode == 2 and "has no finished cell on digits:5-9 of these candidates" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_spiking_backbone_is_ranked_by_conv2s_spikes(tmp_path):
    """spyketorch's features are conv2's spikes (the fraction of positions where each map fired), its source head
    conv3's class scores: an STDP-trained mozafari_small ranks above a random one, whose conv2 is silent (k-NN at
    chance 0.2; measured 0.775 for one trained 1 epoch on 40 digits per class)."""
    from tle.analysis.transferability import SCORES

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    data = ["--image-size", "16", "--channels", "1", "--max-per-class", "40"]
    proc = tle_inprocess("--quiet", "run", "--backend", "spyketorch", "--model", "mozafari_small", "--dataset", "digits",
                         "--epochs", "1", "--set", "train.stdp.presentations=3000", "--no-export", "--json", *data,
                         env=env, check_rc=0)
    run_id = json.loads(proc.stdout.strip().splitlines()[-1])["run_id"]
    trained = f"spyketorch:mozafari_small@runs:/{run_id}"
    proc = tle_inprocess("rank", "--dataset", TARGET, "--candidates", f"spyketorch:mozafari_small@random,{trained}",
                         "--json", *data, env=env, check_rc=0)
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["candidates"]
    assert rows[0]["candidate"] == trained and rows[0]["scores"]["knn"] > 0.5, rows
    for score in SCORES:
        values = {r["candidate"]: r["scores"][score] for r in rows}
        if None not in values.values():
            assert values[trained] > values["spyketorch:mozafari_small@random"], (score, values)
    assert rows[0]["scores"]["nce"] is not None and rows[0]["scores"]["leep"] is not None  # conv3's class scores
