"""A spiking net on a small training set: STDP sized by presentations (a small set is presented more often),
a warning and a tag when a layer did not converge, and a FAILED run when the decision layer answers every image
with the same class."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import tle  # noqa: E402

SMALL = ("--backend", "spyketorch", "--model", "mozafari_small", "--image-size", 16, "--batch-size", 16,
         "--dataset", "digits:0-4", "--max-per-class", 90, "--no-export")


def _train(model, data, strategy="scratch", source=None, epochs=10, presentations=None):
    """Train through the backend's hooks on the core's real loop; (net, test accuracy, loop, epoch records)."""
    from tle.contract.records import Blueprint, ResolvedWeights
    from tle.contract.spec import HeadSpec, TrainSpec
    from tle.contract.strategy import Rates, build_plan
    from tle_spyketorch import plugin
    from tle_torch.testing import recording_loop

    net = plugin.load_backbone(blueprint=Blueprint(model=model, class_names=list(data.class_names),
                                                   input_shape=data.input_shape, head=HeadSpec(), device="cpu",
                                                   precision="fp32", seed=0), weights=ResolvedWeights("none"))
    if source is not None:  # S2's network B: the source's conv1-conv2, a conv3 of its own
        net.conv1.data.copy_(source.conv1)
        net.conv2.data.copy_(source.conv2)
    stage = build_plan(strategy, ["conv1", "conv2"], Rates(epochs, 1e-3)).stages[0]
    spec = TrainSpec(batch_size=32, epochs=epochs, **({"stdp": {"presentations": presentations}}
                                                       if presentations is not None else {}))
    plugin.freeze_policy(model=net, trainable=dict(stage.trainable))
    loop, records = recording_loop(stage)
    plugin.train(model=net, data=data, stage=stage, train=spec, loop=loop)
    ev = plugin.evaluate(model=net, images=data.x_test, labels=data.y_test, batch_size=32)
    return net, float((ev.logits.argmax(1) == data.y_test).mean()), loop, records


@pytest.mark.slow
def test_mozafari_learns_from_80_images_per_class_and_b_from_its_features():
    """240 training images (the measured case: 8 passes left every image in one class, accuracy 0.2)."""
    from tle.data import load_dataset
    from tle.contract.spec import DataSpec

    def data(source):
        return load_dataset(DataSpec(source=source, image_size=28, channels=1, max_per_class=80), seed=0)

    digits = data("digits:0-4")
    assert len(digits.y_train) == 240
    a, acc_a, loop, records = _train("mozafari", digits)
    stdp = records[0].metrics
    # Both layers converged, which took more passes over this small set than the old fixed 8.
    assert stdp["conv1_convergence"] < 0.04 and stdp["conv2_convergence"] < 0.04, stdp
    assert stdp["conv2_stdp_passes"] > 8 and stdp["conv2_stdp_presentations"] <= 8000
    assert loop.warnings == []
    assert acc_a > 0.4, acc_a  # chance is 0.2
    # Network B: A's conv1-conv2 frozen, conv3 learned on the other five digits (S2's feature extractor).
    _, acc_b, _, records_b = _train("mozafari", data("digits:5-9"), strategy="feature-extractor", source=a)
    assert "conv1_convergence" not in records_b[0].metrics
    assert acc_b > 0.4, acc_b


@pytest.mark.slow
def test_an_unconverged_layer_is_a_warning_line_and_a_tag(store_env):
    # 800 presentations: conv1 converges (~730 here), conv2 does not (~1,400); the run still finishes.
    proc = tle("run", *SMALL, "--epochs", 2, "--experiment", "snn-budget", "--set", "train.stdp.presentations=800",
               "--json", env=store_env, check_rc=0)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "STDP did not converge (conv2 " in lines[0] and "train.stdp.presentations" in lines[0]
    run = mlflow.MlflowClient().get_run(json.loads(proc.stdout.splitlines()[-1])["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["spyketorch.unconverged"] == "conv2"
    assert run.data.tags["tle.warning"] == lines[0].removeprefix("warning: ")
    assert run.data.params["train.stdp.presentations"] == "800"
    assert run.data.metrics["conv2_stdp_presentations"] == 800 and run.data.metrics["conv1_convergence"] < 0.04


@pytest.mark.slow
def test_a_decision_layer_that_ties_on_every_image_fails_the_run(store_env):
    # No STDP at all: conv1-conv2 keep their N(0.8, 0.05) synapses and fire everywhere, so conv3 sees the
    # same spikes from every image and decides one class for all of them.
    proc = tle("run", *SMALL, "--epochs", 1, "--experiment", "snn-tie", "--set", "train.stdp.presentations=0",
               env=store_env, check_rc=2)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "decides class" in errors[0] and "for all 270 training images" in errors[0]
    assert "conv1, conv2 did not converge" in errors[0]
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("snn-tie").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["tle.error"] == "DegenerateNetwork: " + errors[0].removeprefix("error: ")
    assert run.data.tags["spyketorch.unconverged"] == "conv1,conv2"


def test_stdp_stops_at_its_budget_or_once_converged():
    """The phase itself, cheaply: a budget that is not a multiple of the set is presented exactly, a budget of 0
    presents nothing, and a converged layer stops before the budget."""
    from tle.contract.spec import TrainSpec
    from tle.contract.strategy import Rates, build_plan
    from tle_spyketorch import plugin
    from tle_spyketorch.train import Passes, stdp_phase
    from tle_torch.testing import recording_loop

    from test_spyketorch_fusion import build

    x = torch.rand(50, 16, 16, 1)
    stage = build_plan("scratch", ["conv1", "conv2"], Rates(1, 1e-3)).stages[0]
    loop, _ = recording_loop(stage)
    net = build([str(c) for c in range(3)])
    plugin.freeze_policy(model=net, trainable=dict(stage.trainable))
    spec = TrainSpec(batch_size=16)
    passes = Passes(spec.batch_size, spec.seed, stage.index)
    assert stdp_phase(net, "conv1", 0, x, passes, loop)["conv1_stdp_presentations"] == 0
    out = stdp_phase(net, "conv1", 130, x, passes, loop)
    assert out["conv1_stdp_presentations"] == 130 and out["conv1_stdp_passes"] == pytest.approx(2.6)
    net.conv1.data.copy_((net.conv1 > 0.8).float())  # every synapse on a bound: converged
    assert stdp_phase(net, "conv1", 1000, x, passes, loop)["conv1_stdp_presentations"] == 0
    assert np.isclose(stdp_phase(net, "conv1", 1000, x, passes, loop)["conv1_convergence"], 0.0)
