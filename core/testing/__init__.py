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

The fields of :mod:`tle.contract.tuning`, for a backend that lists their capability and answers
``block_parameters``, are checked by what one SGD step (no momentum, the whole training split in one batch)
does to each block: exactly the parameters ``train.params`` selects move (and the counts say so); each block
moves by its ``train.lr_decay`` factor of what it moves at factor 1; L2-SP adds α(w − w⁰) to the gradient of
blocks that start pretrained and βw to the head's; and the ``lr`` each epoch reports is the plan's rate of that
epoch (``train.schedule``), the same numbers in every backend. A backend that lists none of them is refused such
a spec by the core, in one line (checked too).
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
from tle.contract.strategy import HEAD, Rates, Tuning, build_plan
from tle.contract.tuning import L2SP_CAPABILITY, LR_FACTORS, PARAM_SELECT, PARAMS, SCHEDULE, Schedule, selected
from tle.store.status import RunStatus
from tle.store.tracking import tracking_uri_kept

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
    step_lr: ClassVar[float] = 0.05  # the SGD rate of the one-step checks of train.lr_decay, params, l2sp, schedule
    spec_overrides: ClassVar[dict[str, Any]] = {}  # e.g. {"train": {"stdp": {"presentations": 500}}}

    # -- fixtures (one of each per test class) ----------------------------------

    @pytest.fixture(autouse=True)
    def conformance_keeps_the_tracking_uri(self):
        """The runner points MLflow (a process-wide setting) at the suite's store: give the caller's back, so the
        suite never redirects the other tests of a process."""
        with tracking_uri_kept():
            yield

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

        from tle.backends.manager import manager
        from tle.run.runner import RunOptions, run_experiment

        recorder = _TrainRecorder(conformance_trained)
        manager().register(recorder, name="conformance:train-recorder")
        try:
            with tracking_uri_kept():
                return run_experiment(cls._spec(conformance_store, strategy="scratch"),
                                      RunOptions(quiet=True, export=True))
        finally:
            manager().unregister(recorder)

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

    @classmethod
    def _build(cls, backend, data, seed: int = 0, weights: ResolvedWeights | None = None, class_names=None):
        from tle.contract.spec import HeadSpec

        names = list(class_names or data.class_names)
        return backend.hook.load_backbone(blueprint=Blueprint(model=cls.model, class_names=tuple(names),
                                                              input_shape=data.input_shape, head=HeadSpec(),
                                                              device="cpu", precision="fp32", seed=seed),
                                          weights=weights or ResolvedWeights(kind="none"))

    def _logits(self, backend, model, images) -> np.ndarray:
        return np.asarray(backend.hook.evaluate(model=model, images=images, labels=None,
                                                batch_size=len(images)).logits)

    def _state(self, backend, model, images, folder: Path) -> str:
        """A digest of the model: its parameters (``block_parameters``, else its saved weights file) and its blocks'
        outputs where the backend reports them (``block_activations``; an untrained spiking net's spikes can be
        silent for any weights, so they alone say little)."""
        import hashlib

        digest = hashlib.sha256()
        params = backend.hook.block_parameters(model=model)
        if params:
            for block in sorted(params):
                for name in sorted(params[block]):
                    digest.update(np.ascontiguousarray(params[block][name], dtype=np.float32).tobytes())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            digest.update(Path(backend.hook.save_weights(model=model, directory=folder)).read_bytes())
        for value in (backend.hook.block_activations(model=model, images=images, blocks=None) or {}).values():
            digest.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def _blocks(self, backend) -> list[str]:
        return list(backend.model(self.model).blocks)

    def _train(self, backend, model, data, stage, **loop):
        from tle.contract.spec import TrainSpec

        backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats,
                                   params=stage.params)
        history = History()
        trained = backend.hook.train(model=model, data=data, stage=stage, loop=TrainLoop(
            stage, history, **loop),
            train=TrainSpec(epochs=stage.epochs, batch_size=self.batch_size, lr=self.lr, seed=0,
                            **self.spec_overrides.get("train", {})))
        self._check_trained(trained, len(history.records))
        return history

    @classmethod
    def _step(cls, backend, data, stage, capture: tuple[int, ...] = ()) -> tuple[dict, list, list]:
        """A fresh model (seed 0) trained for ``stage`` with SGD at ``stage``'s rates, no momentum, the whole
        training split in each step: ``(w⁰, [parameters after each epoch in capture], the epochs' lr)``."""
        from tle.contract.loop import Listeners
        from tle.contract.spec import TrainSpec

        model = cls._build(backend, data)
        backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats,
                                   params=stage.params)
        start = backend.hook.block_parameters(model=model)
        if start is None:
            pytest.skip(f"backend {cls.backend} does not answer block_parameters")
        seen: list = []
        history = History()

        def on_epoch(record):
            if record.epoch in capture:
                seen.append(backend.hook.block_parameters(model=model))

        overrides = {k: v for k, v in cls.spec_overrides.get("train", {}).items()
                     if k not in ("optimizer", "momentum", "batch_size", "weight_decay")}
        train = TrainSpec(epochs=stage.epochs, batch_size=len(data.y_train), lr=stage.lr, seed=0, optimizer="sgd",
                          momentum=0.0, **overrides)
        trained = backend.hook.train(model=model, data=data, stage=stage, train=train,
                                     loop=TrainLoop(stage, history, listeners=Listeners(on_epoch=on_epoch)))
        cls._check_trained(trained, len(history.records))
        return start, seen, [r.metrics.get("lr") for r in history.records]

    @staticmethod
    def _skip_unless(backend, *capabilities: str) -> None:
        missing = [c for c in capabilities if c not in backend.info.capabilities]
        if missing:
            pytest.skip(f"backend {backend.info.name} does not list {', '.join(missing)}")

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_baseline(cls, conformance_backend, conformance_data):
        """Four SGD steps (one per epoch) of every block from the same start, at factor 1 without L2-SP, under a
        cosine schedule with a warm-up epoch: w⁰, the parameters after epochs 0 and 1, each epoch's reported lr,
        and the stage."""
        if not {LR_FACTORS, L2SP_CAPABILITY, SCHEDULE} & set(conformance_backend.info.capabilities):
            pytest.skip(f"backend {cls.backend} lists none of lr-factors, l2sp, schedule")
        stage = build_plan("transfer:all", list(conformance_backend.model(cls.model).blocks),
                           Rates(4, cls.step_lr, schedule=Schedule("cosine", 1))).stages[0]
        start, (first, second), lrs = cls._step(conformance_backend, conformance_data, stage, capture=(0, 1))
        return start, first, second, lrs, stage

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

    def test_conformance_block_activations_gives_the_asked_blocks_and_the_heads_logits(self, conformance_backend,
                                                                                     conformance_data):
        """``tle rank``'s one forward pass: the last block as every block's call gives it, and the head's logits as
        ``evaluate`` gives them. A backend without ``block_activations`` is skipped (rank refuses it)."""
        model = self._build(conformance_backend, conformance_data)
        images = conformance_data.x_test[:6]
        every = conformance_backend.hook.block_activations(model=model, images=images, blocks=None)
        if not every:
            pytest.skip(f"backend {self.backend} does not implement block_activations")
        blocks = self._blocks(conformance_backend)
        assert list(every) == blocks
        asked = conformance_backend.hook.block_activations(model=model, images=images, blocks=[blocks[-1], HEAD])
        assert set(asked) == {blocks[-1], HEAD}
        np.testing.assert_allclose(asked[blocks[-1]], every[blocks[-1]], rtol=1e-5, atol=1e-6)
        logits = conformance_backend.hook.evaluate(model=model, images=images, labels=None, batch_size=6).logits
        np.testing.assert_allclose(asked[HEAD], logits, rtol=1e-4, atol=1e-5)

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
        strategies = ["scratch", "feature-extractor", f"finetune:{blocks[-1]}", f"transfer:{blocks[0]}",
                      f"surgical:{blocks[0]}", "gradual", "lp-ft"]
        selections = PARAMS if PARAM_SELECT in conformance_backend.info.capabilities else ("all",)
        model = self._build(conformance_backend, conformance_data)
        totals = set()
        for strategy in strategies:
            for params in selections:
                for stage in build_plan(strategy, blocks, Rates(1, 1e-3), Tuning(params=params)).stages:
                    conformance_backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable),
                                                           fixed_stats=stage.fixed_stats, params=stage.params)
                    counts = list(conformance_backend.hook.count_parameters(model=model))
                    check_counts(stage, counts, self.backend)  # raises naming the block otherwise
                    totals.add(sum(c.total for c in counts))
                    assert all(0 <= c.bias + c.norm <= c.total for c in counts), counts
        assert len(totals) == 1, totals  # freezing never adds or drops parameters

    def test_conformance_gradual_unfreezes_one_block_per_stage_from_the_top(self, conformance_backend,
                                                                           conformance_data):
        blocks = self._blocks(conformance_backend)
        model = self._build(conformance_backend, conformance_data)
        trained = []
        for stage in build_plan("gradual", blocks, Rates(1, 1e-3)).stages:
            conformance_backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable),
                                                   fixed_stats=stage.fixed_stats, params="all")
            trained.append([c.name for c in conformance_backend.hook.count_parameters(model=model) if c.trainable])
        assert trained == [[*blocks[len(blocks) - k:], HEAD] for k in range(len(blocks) + 1)]

    # -- the fine-tuning methods (tle.contract.tuning) ---------------------------

    def test_conformance_one_step_moves_exactly_the_selected_parameters(self, conformance_backend,
                                                                       conformance_data):
        """``surgical`` of the top block with ``train.params: bias+norm``: frozen blocks do not move; of the top
        block exactly as many parameters move as its bias and norm counts say; the head moves whole."""
        self._skip_unless(conformance_backend, PARAM_SELECT)
        blocks = self._blocks(conformance_backend)
        stage = build_plan(f"surgical:{blocks[-1]}", blocks, Rates(1, self.step_lr, 1, self.step_lr),
                           Tuning(params="bias+norm")).stages[1]
        model = self._build(conformance_backend, conformance_data)
        conformance_backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable),
                                               fixed_stats=stage.fixed_stats, params=stage.params)
        counts = {c.name: c for c in conformance_backend.hook.count_parameters(model=model)}
        start, (after,), _ = self._step(conformance_backend, conformance_data, stage, capture=(0,))
        for block, arrays in start.items():
            moved = sum(a.size for name, a in arrays.items() if not np.array_equal(a, after[block][name]))
            c = counts[block]
            want = 0 if not stage.trainable[block] else c.total if block == HEAD else \
                selected(c.total, c.bias, c.norm, "bias+norm")
            assert moved == want == c.trainable, (block, moved, want, c)

    def test_conformance_each_block_moves_at_its_learning_rate_factor(self, conformance_backend, conformance_data,
                                                                     conformance_baseline):
        """``train.lr_decay`` 0.5: one SGD step moves block i of N by 0.5^(N−i) of what it moves at factor 1 (the
        same gradient: same start, same batch), the head by 1."""
        self._skip_unless(conformance_backend, LR_FACTORS)
        start, first, _, _, _ = conformance_baseline
        blocks = self._blocks(conformance_backend)
        stage = build_plan("transfer:all", blocks, Rates(1, self.step_lr, lr_decay=0.5,
                                                         schedule=Schedule("cosine", 1))).stages[0]
        _, (decayed,), lrs = self._step(conformance_backend, conformance_data, stage, capture=(0,))
        assert lrs == [pytest.approx(self.step_lr / 2, rel=1e-6)], lrs
        for block in [*blocks, HEAD]:
            ratio = _moved(start[block], decayed[block]) / _moved(start[block], first[block])
            assert ratio == pytest.approx(stage.factor(block), rel=2e-2), (block, ratio, stage.factor(block))

    def test_conformance_l2sp_adds_its_gradient(self, conformance_backend, conformance_data, conformance_baseline):
        """L2-SP α on blocks that start pretrained (``transfer:all``: every block), β on the head: at w⁰ its
        gradient is βw⁰ on the head and nothing on the blocks; one step later α(w₁ − w⁰) on the blocks."""
        self._skip_unless(conformance_backend, L2SP_CAPABILITY)
        start, first, second, _, base = conformance_baseline
        blocks = self._blocks(conformance_backend)
        alpha, beta = 10.0, 10.0
        pulled = build_plan("transfer:all", blocks, Rates(4, self.step_lr, schedule=Schedule("cosine", 1)),
                            Tuning(l2sp=(alpha, 0.0))).stages[0]
        _, (_, pulled_second), _ = self._step(conformance_backend, conformance_data, pulled, capture=(0, 1))
        for block in blocks:  # step 2: α(w₁ − w⁰) more gradient, at epoch 1's rate
            for name, w0 in start[block].items():
                want = -base.rate(1) * alpha * (first[block][name].astype(np.float64) - w0)
                got = pulled_second[block][name].astype(np.float64) - second[block][name]
                assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max() + 1e-7, (block, name)
        for name in start[HEAD]:  # β = 0: the head's steps are the baseline's
            np.testing.assert_allclose(pulled_second[HEAD][name], second[HEAD][name], rtol=0, atol=1e-6)
        towards_zero = build_plan("transfer:all", blocks, Rates(1, self.step_lr, schedule=Schedule("cosine", 1)),
                                  Tuning(l2sp=(alpha, beta))).stages[0]
        _, (one,), _ = self._step(conformance_backend, conformance_data, towards_zero, capture=(0,))
        for block in blocks:  # at w⁰, α's pull is zero
            for name in start[block]:
                np.testing.assert_allclose(one[block][name], first[block][name], rtol=0, atol=1e-6)
        for name, w0 in start[HEAD].items():  # step 1: βw⁰ more gradient
            want = -towards_zero.rate(0) * beta * w0.astype(np.float64)
            got = one[HEAD][name].astype(np.float64) - first[HEAD][name]
            assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max() + 1e-7, name

    def test_conformance_each_epoch_reports_the_plans_rate(self, conformance_backend, conformance_baseline):
        """``train.schedule: cosine`` with a warm-up epoch: the ``lr`` of each epoch is the plan's, whichever
        backend trains (so the same in all of them)."""
        self._skip_unless(conformance_backend, SCHEDULE)
        *_, lrs, stage = conformance_baseline
        assert lrs == pytest.approx(list(stage.rates()), rel=1e-6), (lrs, stage.rates())
        assert lrs[0] == pytest.approx(self.step_lr / 2) and lrs[1] == pytest.approx(self.step_lr)

    def test_conformance_what_a_backend_cannot_apply_is_refused_before_any_run(self, conformance_backend,
                                                                              conformance_store):
        """A spec field of :mod:`tle.contract.tuning` whose capability the backend does not list: one user error
        from the runner before anything is created."""
        from tle.run.runner import RunOptions, run_experiment

        fields = {LR_FACTORS: {"lr_decay": 0.5}, PARAM_SELECT: {"params": "bias"}, L2SP_CAPABILITY: {"l2sp": "0.1,0.1"},
                  SCHEDULE: {"schedule": "cosine"}}
        missing = [cap for cap in fields if cap not in conformance_backend.info.capabilities]
        if not missing:
            pytest.skip(f"backend {self.backend} applies every field of tle.contract.tuning")
        for cap in missing:
            spec = self._spec(conformance_store, train={"epochs": 1, "batch_size": self.batch_size, "lr": self.lr,
                                                        "seed": 0, **self.spec_overrides.get("train", {}),
                                                        **fields[cap]})
            with pytest.raises(UserError, match=cap):
                run_experiment(spec, RunOptions(quiet=True, export=False))

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


def _moved(before: dict, after: dict) -> float:
    """How far a block moved: the norm of the change over all its arrays (float64)."""
    return float(np.sqrt(sum(float(((after[k].astype(np.float64) - v) ** 2).sum()) for k, v in before.items())))


class _TrainRecorder:
    """A ``tle.plugins``-style wrapper around the backend's ``train``: keeps what it returns."""

    def __init__(self, results: list):
        self.results = results

    @hookimpl(wrapper=True)
    def train(self):
        result = yield
        self.results.append(result)
        return result
