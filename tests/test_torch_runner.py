"""The torch backend driven by the core's runner: data, stages, tracking, runs:/ weights, ONNX parity."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("onnxscript")

from tle.run.runner import RunOptions, run_experiment  # noqa: E402
from tle.contract.spec import build_spec  # noqa: E402


def spec(tmp_path, source, **extra):
    tree = {"backend": "torch", "model": "vgg_small", "dataset": {"source": source, "image_size": 32},
            "train": {"epochs": 2, "batch_size": 32, "finetune_epochs": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "torch-tests"}}
    tree.update(extra)
    return build_spec(tree)


@pytest.mark.slow
def test_pretrain_then_finetune_from_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = run_experiment(spec(tmp_path, "digits:0-4", train={"epochs": 4, "batch_size": 32}), RunOptions(quiet=True))
    assert source.device == "cpu" and source.onnx_max_abs_diff < 1e-4
    assert source.best_val_acc > 0.7

    target = run_experiment(spec(tmp_path, "digits:5-9", strategy="finetune:block5",
                                 weights=f"runs:/{source.run_id}"), RunOptions(quiet=True))
    head, finetune = target.counts
    assert sum(c.trainable for c in head) == head[-1].total
    assert {c.name for c in finetune if c.trainable} == {"block5", "head"}
    assert [r.stage for r in target.history.records] == [0, 0, 1]
    assert target.onnx_max_abs_diff < 1e-4
    # In the store: one continuous step over both stages, and more trainable parameters in the second.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {m.step: m.value for m in client.get_metric_history(target.run_id, "stage")} == {0: 0, 1: 0, 2: 1}
    metrics = client.get_run(target.run_id).data.metrics
    assert metrics["trainable_params_stage1"] > metrics["trainable_params_stage0"]
    # What train returned beside the epochs (tle.contract.records.Trained.metrics), per stage.
    assert "stage0_cached_blocks" in metrics and "stage1_cached_blocks" in metrics

    # Same classes as the source run: its head comes back with the backbone.
    same = run_experiment(spec(tmp_path, "digits:0-4", strategy="feature-extractor", weights=f"runs:/{source.run_id}",
                               train={"epochs": 1, "batch_size": 32, "lr": 1e-5}), RunOptions(quiet=True))
    assert same.history.records[0].metrics["val_acc"] >= source.history.records[-1].metrics["val_acc"] - 0.05
