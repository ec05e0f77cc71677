"""``tle.testing``: the backend contract as tests any backend runs against itself.

Subclass :class:`BackendConformance` in your backend's test suite, name your
backend and one small model, and pytest checks the whole contract of
``tle.contract.hookspecs`` on real data (scikit-learn's digits) with a real MLflow store::

    from tle.testing import BackendConformance

    class TestConformance(BackendConformance):
        backend = "numpy"
        model = "mlp"

Every test is named ``test_conformance_*`` (select them with ``-k conformance``).
What is checked: the backend's info and model registration; logits and loss
of ``evaluate``; construction fixed by the seed; parameter counts per block
and the freeze state of every stage of every strategy (exactly the plan's);
``apply_init`` seeded per block, refusing unknown blocks; a run through the
core's runner that trains (``train`` returning a :class:`tle.contract.records.Trained`
that counts the epochs the loop saw), beats chance and lands in MLflow with its params,
metrics, datasets and artifacts; the weights round trip (head kept only for
the same classes) and ``--weights runs:/ID``; ONNX parity; resuming from a
checkpoint (backends that list ``resume``); user errors ending with exit code
2 and one line. Backends set the class attributes below to fit their models
(image size, channels, how much accuracy a short run must reach).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest

from tle.contract.records import Blueprint, ResolvedWeights, Trained
from tle.errors import UserError
from tle.contract.hookspecs import hookimpl
from tle.contract.loop import Checkpointing, History, TrainLoop
from tle.contract.strategy import HEAD, Rates, build_plan
from tle.store.status import RunStatus

__all__ = ["BackendConformance"]


class BackendConformance:
    backend: ClassVar[str] = ""
    model: ClassVar[str] = ""
    dataset: ClassVar[str] = "digits:0-2"  # three classes: chance is 1/3
    image_size: ClassVar[int | None] = None  # None: the model's default size
    channels: ClassVar[Literal[1, 3]] = 1
    max_per_class: ClassVar[int] = 40
    epochs: ClassVar[int] = 2
    batch_size: ClassVar[int] = 16
    lr: ClassVar[float] = 1e-2
    min_accuracy: ClassVar[float] = 0.5  # test accuracy the scratch run must reach (chance 0.33)
    init: ClassVar[str] = "he_normal"
    resume_atol: ClassVar[float] = 1e-5  # logits of a resumed stage against the uninterrupted one
    spec_overrides: ClassVar[dict[str, Any]] = {}  # e.g. {"train": {"stdp": {"presentations": 500}}}

    # -- fixtures (one of each per test class) ----------------------------------

    @pytest.fixture(autouse=True)
    def conformance_keeps_the_tracking_uri(self):
        """The runner points MLflow (a process-wide setting) at the suite's store: give the caller's back, so the
        suite never redirects the other tests of a process."""
        import mlflow

        before = mlflow.get_tracking_uri()
        yield
        mlflow.set_tracking_uri(before)

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_backend(cls):
        from tle.backends.manager import load_backend

        assert cls.backend and cls.model, "set the backend and model class attributes"
        return load_backend(cls.backend)

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_data(cls, conformance_backend):
        from tle.data import load_dataset
        from tle.contract.spec import DataSpec

        spec = DataSpec(source=cls.dataset, image_size=cls._size(conformance_backend), channels=cls.channels,
                        max_per_class=cls.max_per_class)
        return load_dataset(spec, seed=0, extra_sources=conformance_backend.dataset_sources())

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_store(cls, tmp_path_factory) -> str:
        return f"sqlite:///{tmp_path_factory.mktemp('tle-conformance') / 'mlflow.db'}"

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_trained(cls) -> list:
        """What the backend's ``train`` returned to the runner in :meth:`conformance_run`, one per stage."""
        return []

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_run(cls, conformance_store, conformance_trained):
        """One scratch run through the core's runner, exported to ONNX; a wrapper records what ``train`` returns."""
        import mlflow

        from tle.backends.manager import manager
        from tle.run.runner import RunOptions, run_experiment

        recorder = _TrainRecorder(conformance_trained)
        before = mlflow.get_tracking_uri()
        manager().register(recorder, name="conformance:train-recorder")
        try:
            return run_experiment(cls._spec(conformance_store, strategy="scratch"),
                                  RunOptions(quiet=True, export=True))
        finally:
            manager().unregister(recorder)
            mlflow.set_tracking_uri(before)

    # -- helpers ---------------------------------------------------------------

    @classmethod
    def _size(cls, backend) -> int:
        return int(cls.image_size or backend.model(cls.model).default_size or 32)

    @classmethod
    def _spec(cls, store: str, **top):
        from tle.backends.manager import load_backend
        from tle.contract.spec import build_spec

        tree: dict[str, Any] = {
            "backend": cls.backend, "model": cls.model, "init": cls.init,
            "dataset": {"source": cls.dataset, "image_size": cls._size(load_backend(cls.backend)), "channels": cls.channels,
                        "max_per_class": cls.max_per_class},
            "train": {"epochs": cls.epochs, "batch_size": cls.batch_size, "lr": cls.lr, "seed": 0},
            "tracking": {"uri": store, "experiment": f"conformance-{cls.backend}"},
        }
        for key, value in cls.spec_overrides.items():
            tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
        tree.update(top)
        return build_spec(tree)

    def _build(self, backend, data, seed: int = 0, weights: ResolvedWeights | None = None, class_names=None):
        from tle.contract.spec import HeadSpec

        names = list(class_names or data.class_names)
        return backend.hook.load_backbone(blueprint=Blueprint(model=self.model, class_names=tuple(names),
                                                              input_shape=data.input_shape, head=HeadSpec(),
                                                              device="cpu", precision="fp32", seed=seed),
                                          weights=weights or ResolvedWeights(kind="none"))

    def _logits(self, backend, model, images) -> np.ndarray:
        return np.asarray(backend.hook.evaluate(model=model, images=images, labels=None,
                                                batch_size=len(images)).logits)

    def _state(self, backend, model, images, folder: Path) -> str:
        """A digest of what the model computes: its blocks' outputs where the backend reports them
        (``block_activations``), else its saved weights (an untrained spiking net's logits say little)."""
        import hashlib

        outputs = backend.hook.block_activations(model=model, images=images)
        if outputs:
            return hashlib.sha256(b"".join(np.ascontiguousarray(v, dtype=np.float32).tobytes()
                                           for v in outputs.values())).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        return hashlib.sha256(Path(backend.hook.save_weights(model=model, directory=folder)).read_bytes()).hexdigest()

    def _blocks(self, backend) -> list[str]:
        return list(backend.model(self.model).blocks)

    def _train(self, backend, model, data, stage, **loop):
        from tle.contract.spec import TrainSpec

        backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
        history = History()
        trained = backend.hook.train(model=model, data=data, stage=stage, loop=TrainLoop(
            stage, history, **loop),
            train=TrainSpec(epochs=stage.epochs, batch_size=self.batch_size, lr=self.lr, seed=0,
                            **self.spec_overrides.get("train", {})))
        self._check_trained(trained, len(history.records))
        return history

    @staticmethod
    def _check_trained(trained, epochs: int) -> None:
        """``train`` returns a :class:`tle.contract.records.Trained` that counts the epochs the loop saw (no early
        stopping here) and whose stage metrics are numbers."""
        assert isinstance(trained, Trained), f"train returned {type(trained).__name__}, not tle.contract.records.Trained"
        assert trained.epochs == epochs and not trained.stopped_early, (trained, epochs)
        assert all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in trained.metrics.items()), trained

    # -- registration ----------------------------------------------------------

    def test_conformance_backend_info(self, conformance_backend):
        info = conformance_backend.info
        assert info.name == self.backend and info.status == "ok"
        assert info.framework and isinstance(info.capabilities, tuple)

    def test_conformance_model_is_registered_with_its_blocks(self, conformance_backend):
        info = conformance_backend.model(self.model)
        assert info.available and len(info.blocks) >= 1 and HEAD not in info.blocks
        assert len(set(info.blocks)) == len(info.blocks)

    # -- a model ---------------------------------------------------------------

    def test_conformance_evaluate_gives_one_row_of_logits_per_image(self, conformance_backend, conformance_data):
        model = self._build(conformance_backend, conformance_data)
        images, labels = conformance_data.x_test[:7], conformance_data.y_test[:7]
        out = conformance_backend.hook.evaluate(model=model, images=images, labels=labels, batch_size=4)
        assert np.asarray(out.logits).shape == (7, conformance_data.num_classes)
        assert np.isfinite(out.loss) and out.loss > 0
        assert np.isnan(conformance_backend.hook.evaluate(model=model, images=images, labels=None,
                                                          batch_size=4).loss)

    def test_conformance_the_seed_fixes_the_model(self, conformance_backend, conformance_data):
        images = conformance_data.x_test[:8]
        a, b, c = (self._logits(conformance_backend, self._build(conformance_backend, conformance_data, seed=s), images)
                   for s in (0, 0, 1))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)

    def test_conformance_counts_name_every_block_and_the_head(self, conformance_backend, conformance_data):
        counts = list(conformance_backend.hook.count_parameters(model=self._build(conformance_backend,
                                                                                  conformance_data)))
        assert [c.name for c in counts] == [*self._blocks(conformance_backend), HEAD]
        assert all(c.total >= 0 and 0 <= c.trainable <= c.total for c in counts)

    def test_conformance_every_stage_of_every_strategy_freezes_what_the_plan_says(self, conformance_backend,
                                                                                  conformance_data):
        from tle.run.runner import check_counts

        blocks = self._blocks(conformance_backend)
        strategies = ["scratch", "feature-extractor", f"finetune:{blocks[-1]}", f"transfer:{blocks[0]}"]
        model = self._build(conformance_backend, conformance_data)
        totals = set()
        for strategy in strategies:
            for stage in build_plan(strategy, blocks, Rates(1, 1e-3)).stages:
                conformance_backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable),
                                                       fixed_stats=stage.fixed_stats)
                counts = list(conformance_backend.hook.count_parameters(model=model))
                check_counts(stage, counts, self.backend)  # raises naming the block otherwise
                totals.add(sum(c.total for c in counts))
        assert len(totals) == 1, totals  # freezing never adds or drops parameters

    def test_conformance_apply_init_is_seeded_per_block(self, conformance_backend, conformance_data, tmp_path):
        from tle.contract.initializers import InitSpec

        block = self._blocks(conformance_backend)[0]
        drawn = []
        for seed in (3, 3, 4):
            model = self._build(conformance_backend, conformance_data)
            assert conformance_backend.hook.apply_init(model=model, blocks=[block], init=InitSpec(name="he_normal"),
                                                       seed=seed)
            drawn.append(self._state(conformance_backend, model, conformance_data.x_test[:8], tmp_path / str(len(drawn))))
        assert drawn[0] == drawn[1] and drawn[0] != drawn[2]

    def test_conformance_apply_init_refuses_an_unknown_block(self, conformance_backend, conformance_data):
        from tle.contract.initializers import InitSpec

        model = self._build(conformance_backend, conformance_data)
        with pytest.raises(UserError):
            conformance_backend.hook.apply_init(model=model, blocks=["no_such_block"],
                                                init=InitSpec(name="zeros"), seed=0)

    # -- weights ---------------------------------------------------------------

    def test_conformance_weights_round_trip_keeps_the_head_only_for_the_same_classes(
            self, conformance_backend, conformance_data, tmp_path):
        images = conformance_data.x_test[:8]
        model = self._build(conformance_backend, conformance_data)
        path = Path(conformance_backend.hook.save_weights(model=model, directory=tmp_path))
        assert path.is_file()
        reference = self._logits(conformance_backend, model, images)
        names = tuple(conformance_data.class_names)
        # Another seed draws another head: only a head loaded from the file gives the same logits.
        same = self._build(conformance_backend, conformance_data, seed=1,
                           weights=ResolvedWeights(kind="file", source=str(path), path=path, class_names=names))
        np.testing.assert_allclose(self._logits(conformance_backend, same, images), reference, atol=1e-6)
        other = tuple(f"other-{n}" for n in names)
        fresh = self._build(conformance_backend, conformance_data, seed=1, class_names=other,
                            weights=ResolvedWeights(kind="file", source=str(path), path=path, class_names=names))
        assert not np.allclose(self._logits(conformance_backend, fresh, images), reference, atol=1e-6)

    # -- a run through the core ------------------------------------------------

    def test_conformance_a_run_trains_each_epoch_and_beats_chance(self, conformance_run, conformance_trained):
        records = conformance_run.history.records
        assert [r.epoch for r in records] == list(range(self.epochs))
        assert len(conformance_trained) == 1, conformance_trained  # scratch: one stage
        self._check_trained(conformance_trained[0], len(records))
        for r in records:
            assert {"train_loss", "val_acc"} <= set(r.metrics) and np.isfinite(r.metrics["train_loss"])
        assert conformance_run.test.accuracy >= self.min_accuracy, conformance_run.test.accuracy

    def test_conformance_a_run_lands_in_mlflow(self, conformance_run, conformance_store):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(conformance_store)
        run = client.get_run(conformance_run.run_id)
        assert run.info.status == RunStatus.FINISHED
        assert run.data.tags["backend"] == self.backend and run.data.tags["model"] == self.model
        assert {"test_acc", "best_val_acc", "train_loss", "val_acc", "onnx_max_abs_diff"} <= set(run.data.metrics)
        assert run.data.params["backend"] == self.backend and "data.fingerprint" in run.data.params
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"weights", "spec.yaml", "class_names.json", "plots"} <= artifacts, artifacts
        assert run.inputs is not None
        contexts = {t.value for d in run.inputs.dataset_inputs for t in d.tags if t.key == "mlflow.data.context"}
        assert contexts == {"train", "val", "test"}

    def test_conformance_onnx_model_matches_the_framework(self, conformance_backend, conformance_run,
                                                          conformance_data, conformance_store, tmp_path):
        import mlflow
        import mlflow.artifacts

        from tle.interop.serving import open_model

        if "onnx" not in conformance_backend.info.capabilities:
            pytest.skip(f"backend {self.backend} does not export ONNX")
        assert conformance_run.onnx_max_abs_diff is not None and conformance_run.onnx_max_abs_diff <= 1e-4
        mlflow.set_tracking_uri(conformance_store)
        folder = Path(mlflow.artifacts.download_artifacts(run_id=conformance_run.run_id, artifact_path="model",
                                                          dst_path=str(tmp_path)))
        onnx_file = next(folder.rglob("*.onnx"))
        served = open_model(onnx_file, prefer_gpu=False).logits(conformance_data.x_test[:5])  # another batch size
        assert served.shape == (5, conformance_data.num_classes)

    def test_conformance_weights_of_a_run_start_another_run(self, conformance_run, conformance_store):
        from tle.run.runner import RunOptions, run_experiment

        spec = self._spec(conformance_store, strategy="feature-extractor", weights=f"runs:/{conformance_run.run_id}")
        result = run_experiment(spec, RunOptions(quiet=True, export=False))
        assert result is not None  # not a distributed run
        # Same classes: the head comes along, so the frozen-backbone run starts where the first one ended.
        assert result.test.accuracy >= self.min_accuracy, result.test.accuracy

    def test_conformance_resume_continues_a_stage_exactly(self, conformance_backend, conformance_data, tmp_path):
        if "resume" not in conformance_backend.info.capabilities:
            pytest.skip(f"backend {self.backend} does not resume runs")
        blocks = self._blocks(conformance_backend)
        images = conformance_data.x_test[:16]
        two = build_plan("scratch", blocks, Rates(2, self.lr)).stages[0]
        straight = self._build(conformance_backend, conformance_data)
        self._train(conformance_backend, straight, conformance_data, two)
        first = self._build(conformance_backend, conformance_data)
        folder = tmp_path / "checkpoint"
        folder.mkdir()
        one = build_plan("scratch", blocks, Rates(1, self.lr)).stages[0]
        self._train(conformance_backend, first, conformance_data, one, checkpointing=Checkpointing(folder / "last"))
        written = sorted(folder.iterdir())
        assert written, "the backend wrote no checkpoint into loop.checkpoint_path"
        resumed = self._build(conformance_backend, conformance_data, seed=5)  # the checkpoint must override it
        history = self._train(conformance_backend, resumed, conformance_data, two,
                              checkpointing=Checkpointing(resume_from=written[0], start_epoch=1))
        assert [r.epoch for r in history.records] == [1]
        np.testing.assert_allclose(self._logits(conformance_backend, resumed, images),
                                   self._logits(conformance_backend, straight, images), atol=self.resume_atol)

    # -- the command line ------------------------------------------------------

    def test_conformance_user_errors_exit_2_with_one_line(self, conformance_store):
        env = {**os.environ, "MLFLOW_TRACKING_URI": conformance_store, "COLUMNS": "200"}
        for args in (["--model", "no_such_model"], ["--model", self.model, "--strategy", "finetune:no_such_block"]):
            proc = subprocess.run([sys.executable, "-m", "tle", "--quiet", "run", "--backend", self.backend, *args,
                                   "--dataset", self.dataset, "--epochs", "1"], capture_output=True, text=True,
                                  env=env, timeout=300)
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode == 2, proc.stderr
            assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr


class _TrainRecorder:
    """A ``tle.plugins``-style wrapper around the backend's ``train``: keeps what it returns."""

    def __init__(self, results: list):
        self.results = results

    @hookimpl(wrapper=True)
    def train(self):
        result = yield
        self.results.append(result)
        return result
