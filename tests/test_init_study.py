"""``tle init-study`` (S4): one dense sigmoid layer per initialiser in every backend, and a model's blocks.

The numbers come from the frameworks: the CLI runs each backend in a worker
process of its own (TensorFlow and torch must not share one). The keras
hooks are also called directly, in ``test_init_study_keras.py``'s own process.
"""

from __future__ import annotations

import json
from importlib.util import find_spec

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import tle, tle_inprocess

from tle.contract.initializers import InitSpec
from tle.studies.init_study import BlockAccumulator, dense_summary, study_inputs

HAVE = {b: find_spec(m) is not None for b, m in (("torch", "tle_torch"), ("keras", "tle_keras"),
                                                  ("numpy", "tle_numpy"))}
BACKENDS = tuple(b for b, ok in HAVE.items() if ok)
INITS = ("normal:1", "glorot_uniform", "glorot_normal", "he_normal")
needs_torch = pytest.mark.skipif(not HAVE["torch"], reason="the torch backend is not installed")


def test_block_statistics_do_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(10, 4, 4, 6)), 0).astype(np.float32)
    a[..., 2] = 0  # a channel that never fires
    whole, parts = BlockAccumulator(), BlockAccumulator()
    whole.add(a)
    for chunk in np.array_split(a, 3):
        parts.add(chunk)
    for acc in (whole, parts):
        s = acc.summary()
        assert s["mean"] == pytest.approx(float(a.mean()), rel=1e-6)
        assert s["std"] == pytest.approx(float(a.std()), rel=1e-6)
        assert s["zero_fraction"] == pytest.approx(float((a == 0).mean()))
        assert s["dead_units"] == pytest.approx(1 / 6)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "keras"])
def test_dense_hook_draws_the_initialiser_with_zero_bias(backend):
    """Through a linear activation the layer's weights can be recovered by least squares from the
    framework's own outputs: their std must be the initialiser's and the bias zero."""
    from tle.backends.manager import load_backend

    hook = load_backend(backend).hook
    x = study_inputs(400, 200, seed=1)
    for text in ("glorot_uniform", "he_normal", "normal:1"):
        a = hook.dense_activations(inputs=x, units=50, activation="linear", init=InitSpec.parse(text), seed=0)
        assert a.shape == (400, 50) and a.dtype == np.float32
        w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))].astype(np.float64), a.astype(np.float64), rcond=None)
        # 10,000 weights: the sample std itself scatters by under 1 %.
        assert w[:-1].std() == pytest.approx(InitSpec.parse(text).expected_std(200, 50), rel=0.04), text
        assert np.abs(w[-1]).max() < 1e-3, text
    sig = hook.dense_activations(inputs=x[:100], units=256, activation="sigmoid", init=InitSpec(name="zeros"), seed=0)
    assert np.allclose(sig, 0.5)


@pytest.fixture(scope="module")
def dense_study(store, tmp_path_factory):
    """The book's experiment through the CLI, every installed backend, tracked in a temporary store.

    It prints the README's markdown table; every number, seed by seed, comes back from the run's
    ``init_study.json`` artifact (what ``--format json`` prints)."""
    cwd = tmp_path_factory.mktemp("s4")
    args = ["--quiet", "init-study", *(f"--backend={b}" for b in BACKENDS), *(f"--init={i}" for i in INITS),
            "--samples", 300, "--format", "markdown", "--plot", cwd / "s4.png", "--experiment", "s4-test"]
    markdown = tle(*args, env={"MLFLOW_TRACKING_URI": store}, cwd=cwd, check_rc=0).stdout.splitlines()
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("s4-test")
    (parent,) = [r for r in client.search_runs([experiment.experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    path = client.download_artifacts(parent.info.run_id, "init_study.json", str(cwd))
    return {**json.loads(open(path).read()), "run_id": parent.info.run_id}, markdown, cwd


def test_normal_1_saturates_and_glorot_does_not(dense_study):
    result, _, _ = dense_study
    assert list(result["backends"]) == list(BACKENDS) and result["seeds"] == [0, 1, 2]
    assert len(result["results"]) == len(BACKENDS) * len(INITS) * 3
    for r in result["results"]:  # every seed of every backend, not just their mean
        assert (r["saturated_fraction"] > 0.8) if r["init"] == "normal:1" else (r["saturated_fraction"] < 0.05), r
    sat = {(r["backend"], r["init"]): r["saturated_fraction"] for r in result["summary"]}
    for b in BACKENDS:
        assert sat[b, "normal:1"] > 0.8, b
        assert sat[b, "glorot_uniform"] < 0.05 and sat[b, "glorot_normal"] < 0.05, b
        assert sat[b, "he_normal"] < 0.05, b


def test_same_initialiser_gives_similar_std_across_backends(dense_study):
    result, _, _ = dense_study
    std = {(r["backend"], r["init"]): r["std"] for r in result["summary"]}
    for init in INITS:
        values = [std[b, init] for b in BACKENDS]
        # 256 neurons with their own weight draws per framework: the spread between frameworks is a few %.
        assert max(values) / min(values) < 1.2, (init, values)
    for b in BACKENDS:  # and the differences between initialisers are far larger than between frameworks
        assert std[b, "normal:1"] > 2.5 * std[b, "glorot_uniform"]


def test_dense_study_is_tracked_with_the_png(dense_study, store):
    result, _, cwd = dense_study
    png = cwd / "s4.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(store)
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    for r in result["summary"]:
        key = f"saturated_fraction.{r['init'].replace(':', '_')}.{r['backend']}"
        assert parent.data.metrics[key] == pytest.approx(r["saturated_fraction"])
        assert parent.data.metrics[key.replace(".", "_sd.", 1)] == pytest.approx(r["saturated_fraction_sd"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == ["plots/init_histograms.png"]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["backend"] for c in children) == sorted(BACKENDS)
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.metrics["saturated_fraction.normal_1"] > 0.8


@needs_torch
def test_vgg_small_blocks_at_initialisation(tmp_path):
    proc = tle("--quiet", "init-study", "--model", "vgg_small", "--backend", "torch", "--dataset", "digits",
               "--init", "he_normal", "--init", "glorot_uniform", "--batch", 12, "--format", "json",
               "--plot", tmp_path / "blocks.png", "--no-track", cwd=tmp_path, check_rc=0)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["run_id"] is None and (tmp_path / "blocks.png").stat().st_size > 0
    assert result["config"]["data"]["images"] == 12
    cells = {(r["init"], r["block"]): r for r in result["results"]}
    shapes = {"block1": [16, 16, 8], "block2": [8, 8, 16], "block3": [4, 4, 32], "block4": [2, 2, 32],
              "block5": [1, 1, 32]}
    for init in ("he_normal", "glorot_uniform"):
        for block, shape in shapes.items():
            c = cells[init, block]
            assert c["shape"] == shape
            assert np.isfinite([c["mean"], c["std"], c["zero_fraction"], c["dead_units"]]).all()
            assert c["min"] >= 0 and 0 <= c["zero_fraction"] < 1  # every block ends in ReLU + max-pool
    # Glorot's variance 2/(fan_in+fan_out) halves the signal through each ReLU; He's 2/fan_in keeps it.
    assert cells["he_normal", "block5"]["std"] > 10 * cells["glorot_uniform", "block5"]["std"]


def test_markdown_table(dense_study):
    result, md, _ = dense_study
    assert md[0].endswith("(mean ± sd over 3 seeds)")
    assert md[2] == "| init | " + " | ".join(f"{b} saturated | {b} std" for b in BACKENDS) + " |"
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in md[4:4 + len(INITS)]}
    assert list(rows) == list(INITS)
    summary = {(r["backend"], r["init"]): r for r in result["summary"]}
    for k, b in enumerate(BACKENDS):
        r = summary[b, "normal:1"]
        assert rows["normal:1"][2 * k] == f"{r['saturated_fraction']:.3f} ± {r['saturated_fraction_sd']:.3f}"


def test_csv_has_one_row_per_backend_init_and_seed(capsys):
    from tle.cli.study import _print
    from tle.studies.init_study import BackendMeta, DenseCell, StudyResult

    cells = [DenseCell(b, i, s, **dense_summary(np.full((2, 3), 0.5 + s / 10), "sigmoid"), seconds=0.1)
             for b in ("torch", "keras") for i in ("zeros", "normal:1") for s in (0, 5)]
    result = StudyResult("dense", {"activation": "sigmoid"}, ["zeros", "normal:1"], [0, 5],
                         {b: BackendMeta(b, "1") for b in ("torch", "keras")}, cells)
    _print(result, "csv")
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "backend,init,seed,mean,std,saturated_fraction,min,max,seconds"
    assert len(rows) == 9 and rows[-1].startswith("keras,normal:1,5,1.0,0.0,1.0,")


@pytest.mark.parametrize("args, message", [
    (["--init", "bogus"], "--init 'bogus': unknown initialiser"),
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--samples", "5", "--model", "vgg_small"], "--samples applies to the dense study, not with --model"),
    (["--seed", "-1"], "--seed must be a non-negative integer"),
    (["--model", "mlp", "--backend", "numpy", "--dataset", "folder:/no/such/folder"], "folder"),
])
def test_user_errors_are_one_line(args, message, tmp_path):
    proc = tle_inprocess("--quiet", "init-study", *args, "--no-track", cwd=tmp_path, check_rc=2)
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failing_worker_is_reported_with_its_last_line(tmp_path):
    from tle.studies.init_study import run_workers

    if not HAVE["numpy"]:
        pytest.skip("the example numpy backend is not installed")
    with pytest.raises(RuntimeError, match=r"the numpy worker of tle init-study failed: KeyError: 'no-such-mode'"):
        run_workers(["numpy"], {"mode": "no-such-mode"}, tmp_path, parallel=True)
