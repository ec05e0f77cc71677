"""One training stage with ``model.fit`` and inference, as the core's ``TrainLoop`` expects them.

``fit`` runs Keras's ``model.fit`` one epoch at a time (the traced train step is
kept across the calls), on a ``tf.data`` pipeline over the core's arrays, with a
callback that reports to the core's loop: ``epoch_start`` / ``batch_end`` /
``epoch_end`` with ``train_loss, train_acc, val_loss, val_acc``, and stops when
the loop says so. The model ends in logits: losses are ``from_logits=True``.
MLflow autologging is never enabled (the core tracks).

Determinism: each epoch's shuffle (a NumPy permutation), augmentation
(stateless ops seeded per image) and dropout masks (the model's seed generators,
set at the epoch's start) are drawn from a seed of ``(train.seed, stage,
epoch)`` alone, so a resumed stage sees the very batches and masks the
uninterrupted one did (tf.data's own reshuffle draws per iterator and restarts
with a new pipeline).

Optimisers: Keras's Adam / AdamW / SGD(momentum); ``weight_decay`` is Keras's
decoupled decay for all three (torch's Adam and SGD add it to the gradient
instead). Resume: the checkpoint written to ``loop.checkpoint_path`` after
every epoch is one ``.npz`` with the model's variables, the optimiser's
variables (its step counter and moments), the stage and the epoch;
``loop.resume_from`` restores the model, and the optimiser when the checkpoint
is of this stage, before ``fit(initial_epoch=loop.start_epoch)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from tle.contract.records import Evaluation, Trained
from tle_keras import cache
from tle_keras.init import derived_seed
from tle_keras.params import kinds
from tle_keras.runtime import keras as _keras, set_random_seed, tf as _tf

keras = _keras()
tf = _tf()

LOSS_EVERY = 20  # batches between loss values shown by the progress bar
TRAINERS = 4  # compiled stage models (traced train steps) kept per KerasNet, the most recently used
# Train steps per call of the traced function (one tf.while_loop): the same steps in the same order, so the
# same numbers, with Keras's Python and callbacks once per 8 batches instead of every batch.
STEPS_PER_EXECUTION = 8


def make_optimizer(spec, lr: float, tuning: "VariableTuning | None" = None):
    """Keras's optimiser for ``spec``; with ``tuning``, the same optimiser with per-variable rate factors and
    L2-SP's pull (:func:`tuned`)."""
    wd = spec.weight_decay or None
    kind = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}.get(spec.optimizer, keras.optimizers.SGD)
    args: dict = {"learning_rate": lr, "weight_decay": spec.weight_decay if spec.optimizer == "adamw" else wd}
    if kind is keras.optimizers.SGD:
        args["momentum"] = spec.momentum
    if tuning is None:
        return kind(**args)
    optimizer = tuned(kind)(**args)
    optimizer.tuning = tuning
    return optimizer


class VariableTuning:
    """What :func:`tuned`'s optimiser does per variable (by ``variable.path``): its rate factor (the block's,
    ``train.lr_decay``) and L2-SP's pull, ``(strength, toward_start)``: α toward w⁰ or β toward zero."""

    def __init__(self, knet, stage):
        self.factors: dict[str, float] = {}
        self.pulls: dict[str, tuple[float, bool]] = {}
        for block in knet.trainable:
            for _, v, _ in kinds(knet, block):
                self.factors[v.path] = stage.factor(block)
                if stage.l2sp is not None:
                    self.pulls[v.path] = stage.l2sp.pull(block)

    def key(self) -> tuple:
        """What a traced train step depends on (the factors and strengths are constants in it)."""
        return tuple(sorted(self.factors.items())), tuple(sorted(self.pulls.items()))


_TUNED: dict = {}


def tuned(base):
    """``base`` (a Keras optimiser class) with ``tuning`` applied in its update of each variable: the gradient
    gains L2-SP's α(w − w⁰) or βw, and the rate is multiplied by the variable's factor, inside the step Keras
    traces (after the replicas' gradients are summed, under tf.distribute); decoupled weight decay (Keras's, for
    every optimiser) runs at the variable's rate too. w⁰ lives in optimiser variables (``start``), set by
    :meth:`set_start` after ``build``."""
    cls = _TUNED.get(base)
    if cls is not None:
        return cls

    class Tuned(base):
        tuning: VariableTuning

        def build(self, variables):
            super().build(variables)
            self._tle_factor = [self.tuning.factors.get(v.path, 1.0) for v in variables]
            self._tle_pull = [self.tuning.pulls.get(v.path, (0.0, False)) for v in variables]
            self._tle_start = [self.add_variable_from_reference(v, name="l2sp_start") if toward and strength
                               else None for v, (strength, toward) in zip(variables, self._tle_pull)]
            self._tle_paths = [v.path for v in variables]

        def set_start(self, start: dict) -> None:
            """L2-SP's w⁰, by variable path."""
            for path, variable in zip(self._tle_paths, self._tle_start):
                if variable is not None:
                    variable.assign(start[path])

        def update_step(self, gradient, variable, learning_rate):
            i = self._get_variable_index(variable)
            strength, toward = self._tle_pull[i]
            if strength:
                target = keras.ops.subtract(variable, self._tle_start[i]) if toward else variable
                gradient = gradient + keras.ops.cast(strength, gradient.dtype) * target
            factor = self._tle_factor[i]
            return super().update_step(gradient, variable, learning_rate * factor if factor != 1.0 else learning_rate)

        def _apply_weight_decay(self, variables):
            if self.weight_decay is None:
                return

            def distributed(distribution, variables, **kwargs):
                def decay(variable):
                    if self._use_weight_decay(variable):
                        rate = tf.cast(self.learning_rate, variable.dtype) * self._tle_factor[
                            self._get_variable_index(variable)]
                        variable.assign_sub(variable * tf.cast(self.weight_decay, variable.dtype) * rate)

                for variable in variables:
                    distribution.extended.update(getattr(variable, "value", variable), decay, group=False)

            tf.__internal__.distribute.interim.maybe_merge_call(distributed, self._distribution_strategy, variables)

    Tuned.__name__ = Tuned.__qualname__ = f"Tuned{base.__name__}"
    _TUNED[base] = Tuned
    return Tuned


def augment(x, y, seed, index=0):
    """Random horizontal flip and a random shift of up to 1/8 of the side (zeros shifted in) of one image, drawn
    statelessly from ``(seed, index)``: the same image index and seed always get the same draw."""
    seed, index = tf.cast(seed, tf.int64), tf.cast(index, tf.int64)
    x = tf.image.stateless_random_flip_left_right(x, seed=tf.stack([seed, index]))
    h, w = x.shape[0], x.shape[1]
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    x = tf.pad(x, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    x = tf.image.stateless_random_crop(x, (h, w, x.shape[-1]), seed=tf.stack([seed + 1, index]))
    return x, y


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of one epoch's shuffle, augmentation and dropout masks."""
    return derived_seed(seed, "train", stage, "epoch", epoch)


def epoch_batches(x, y, bs: int, seed: int, augmented: bool):
    """One epoch's batches: the examples in the order of a permutation drawn from ``seed`` (gathered here, so
    the pipeline runs no function of its own), augmented per image from ``seed`` and its place in the epoch
    when asked."""
    order = np.random.default_rng(seed).permutation(len(y))
    ds = tf.data.Dataset.from_tensor_slices((x[order], y[order]))
    if augmented:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.range(len(y)))
        ds = ds.map(lambda xy, k: augment(*xy, seed, k), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(bs).prefetch(tf.data.AUTOTUNE)


def reseed_dropout(variables, seed: int) -> None:
    """Set every seed generator of the model (its dropout layers') to a state drawn from ``seed`` alone."""
    states = [v for v in variables if v.name == "seed_generator_state"]
    for i, state in enumerate(states):
        state.assign(np.array([derived_seed(seed, "dropout", i), 0], dtype=state.dtype))


def save_checkpoint(path, knet, optimizer, epoch: int, stage: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"model/{i}": np.asarray(v) for i, v in enumerate(knet.net.weights)}
    arrays.update({f"optimizer/{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, epoch=epoch, stage=stage, **arrays)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


def load_model_state(path, knet) -> tuple[int, int]:
    """Restore the model's variables; return the checkpoint's ``(stage, epoch)``."""
    with np.load(path) as state:
        for i, v in enumerate(knet.net.weights):
            v.assign(state[f"model/{i}"])
        return int(state["stage"]), int(state["epoch"])


def load_optimizer_state(path, optimizer, variables) -> None:
    if not optimizer.built:
        optimizer.build(variables)
    with np.load(path) as state:
        for i, v in enumerate(optimizer.variables):
            key = f"optimizer/{i}"
            if key not in state or tuple(state[key].shape) != tuple(v.shape):
                raise RuntimeError(f"checkpoint {path} does not fit this stage's optimiser (variable {v.path})")
            v.assign(state[key])


def load_checkpoint(path, knet, optimizer, variables) -> int:
    """Model and optimiser state, as saved; returns the epoch to continue from."""
    _, epoch = load_model_state(path, knet)
    load_optimizer_state(path, optimizer, variables)
    return epoch


class LoopBridge(keras.callbacks.Callback):
    """Reports ``fit``'s progress to the core's TrainLoop and writes checkpoints."""

    def __init__(self, loop, knet, steps: int, stage: int):
        super().__init__()
        self.loop, self.knet, self.steps, self.stage = loop, knet, steps, stage
        self.done = 0  # batches of this epoch reported so far (Keras reports every STEPS_PER_EXECUTION)
        self.epochs = 0  # epochs reported to the loop

    def on_epoch_begin(self, epoch, logs=None):
        self.done = 0
        self.loop.epoch_start(epoch, self.steps)

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the last step of the execution; the epoch's last execution may stop short of it.
        end = min(batch + 1, self.steps)
        n, self.done = end - self.done, end
        shown = None
        if logs and (end == self.steps or end // LOSS_EVERY > (end - n) // LOSS_EVERY):
            shown = float(logs.get("loss", math.nan))
        self.loop.batch_end(n, shown)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        metrics = {"train_loss": logs.get("loss"), "train_acc": logs.get("acc"),
                   "val_loss": logs.get("val_loss", math.nan), "val_acc": logs.get("val_acc", math.nan),
                   "lr": float(np.asarray(self.model.optimizer.learning_rate))}
        if self.loop.checkpoint_path is not None:
            save_checkpoint(self.loop.checkpoint_path, self.knet, self.model.optimizer, epoch + 1, self.stage)
        self.loop.epoch_end(epoch, {k: float(v) for k, v in metrics.items() if v is not None})
        self.epochs += 1
        if self.loop.should_stop:
            self.model.stop_training = True


def trainer(knet, k: int, spec, stage):
    """The compiled model of blocks k+1.. and the head for this freeze configuration, and its optimiser.

    A configuration this KerasNet has trained before (an earlier cell of a warm sweep worker, see
    ``models.py``) gets the same model back, its train step already traced, and the same optimiser with
    every variable set back to its value right after ``build`` and the stage's learning rate: what a
    new optimiser would start from. ``fit`` resets the metrics at every epoch. The key holds everything
    the trace depends on: the input (k), which blocks train and which of their variables (``train.params``),
    which BatchNorms are fixed, the optimiser's kind and constants, the per-variable factors and L2-SP
    strengths, the precision policy. With L2-SP, the optimiser's w⁰ is set from ``knet.l2sp_start``.
    """
    policy = keras.mixed_precision.global_policy().name
    tuning = VariableTuning(knet, stage) if (stage.l2sp is not None or set(stage.lr_factors.values()) - {1.0}) \
        else None
    key = (k, tuple(sorted(b for b, on in knet.trainable.items() if on)), knet.params, tuple(sorted(knet.fixed)),
           spec.optimizer, float(spec.weight_decay or 0.0), float(spec.momentum), policy,
           tuning.key() if tuning is not None else None)
    kept = knet.trainers.get(key)
    if kept is not None:
        model, optimizer, initial = kept
        for variable, value in zip(optimizer.variables, initial, strict=True):
            variable.assign(np.full(tuple(variable.shape), value[0], value[1]) if isinstance(value, tuple) else value)
        optimizer.learning_rate = stage.lr
        knet.trainers.move_to_end(key)
        if stage.l2sp is not None:
            optimizer.set_start(knet.l2sp_start)
        return model, optimizer
    model = knet.stage_model(k)
    optimizer = make_optimizer(spec, stage.lr, tuning)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
                  steps_per_execution=STEPS_PER_EXECUTION)
    # Built here, its variables exist before fit traces train_step; built inside the trace, TensorFlow
    # traces the step a second time (about a quarter of a small model's first epoch).
    optimizer.build(model.trainable_variables)
    if policy != "mixed_float16":  # compile wraps that one in a loss-scale optimiser with state of its own
        knet.trainers[key] = (model, optimizer, [_initial(v) for v in optimizer.variables])
        while len(knet.trainers) > TRAINERS:
            knet.trainers.popitem(last=False)
    if stage.l2sp is not None:
        optimizer.set_start(knet.l2sp_start)
    return model, optimizer


def _initial(variable):
    """A variable's value to restore later: ``(value, dtype)`` when every element is the same (moments start at
    zero), else a copy."""
    value = np.asarray(variable)
    flat = value.reshape(-1)
    if flat.size and (flat == flat[0]).all():
        return (flat[0].item(), value.dtype)
    return value.copy()


def fit(knet, data, stage, spec, loop) -> Trained:
    seed = derived_seed(spec.seed, "train", stage.index)
    set_random_seed(seed)  # Python, NumPy, Keras and TF global seeds; keeps the traced steps instantiated
    if stage.l2sp is not None and knet.l2sp_start is None:  # L2-SP's w⁰, before a checkpoint replaces it
        knet.l2sp_start = {v.path: np.asarray(v).copy() for v in knet.net.weights if v.path in knet.capable}
    # The model first: the frozen prefix cached below must be the checkpoint's.
    resumed_stage = load_model_state(loop.resume_from, knet)[0] if loop.resume_from is not None else None
    start_block = knet.frozen_prefix() if spec.cache_features and not spec.augment else 0
    cached = cache.frozen_features(knet, [data.x_train, data.x_val], start_block, spec.batch_size,
                                   loop.track) if start_block else None
    if cached is None:
        start_block = 0
        x_train, x_val = data.x_train, data.x_val
    else:
        x_train, x_val = cached
    model, optimizer = trainer(knet, start_block, spec, stage)
    if not model.trainable_weights:
        raise RuntimeError(f"stage {stage.index} of {knet.model_name} has no trainable parameters")
    knet.optimizer = optimizer
    if resumed_stage == stage.index:  # a checkpoint of an earlier stage holds another optimiser
        load_optimizer_state(loop.resume_from, optimizer, model.trainable_variables)

    n, bs = len(data.y_train), int(spec.batch_size)
    steps = math.ceil(n / bs)
    x_train, y_train = np.asarray(x_train), np.asarray(data.y_train, dtype=np.int64)
    val_ds = None
    if len(data.y_val):
        val_ds = tf.data.Dataset.from_tensor_slices((x_val, np.asarray(data.y_val, np.int64))).batch(bs)
    bridge = LoopBridge(loop, knet, steps, stage.index)
    # One fit per epoch: Keras draws its epochs from one iterator, which cannot start at a given epoch.
    # The traced train and test steps are kept across the calls (same model, same element spec).
    for epoch in range(loop.start_epoch, stage.epochs):
        if loop.should_stop:
            break
        drawn = epoch_seed(spec.seed, stage.index, epoch)
        reseed_dropout(knet.net.variables, drawn)
        optimizer.learning_rate = stage.rate(epoch)
        model.fit(epoch_batches(x_train, y_train, bs, drawn, spec.augment), validation_data=val_ds,
                  initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps, shuffle=False, verbose=0,
                  callbacks=[bridge])
    return Trained(epochs=bridge.epochs, stopped_early=loop.start_epoch + bridge.epochs < stage.epochs,
                   metrics={"cached_blocks": float(start_block)})


def evaluate(knet, images, labels, batch_size: int) -> Evaluation:
    """Float32 inference mode, batched; the loss is computed from the same logits the core scores."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    if len(x) == 0:
        return Evaluation(loss=math.nan, logits=np.zeros((0, knet.num_classes), np.float32))
    bs = max(1, int(batch_size))
    infer = knet.inference()
    logits = np.concatenate([np.asarray(infer(x[i:i + bs]), dtype=np.float32) for i in range(0, len(x), bs)])
    if labels is None:
        return Evaluation(loss=math.nan, logits=logits)
    y = np.asarray(labels, dtype=np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    return Evaluation(loss=loss, logits=logits)
