"""One training stage with ``model.fit`` and inference, as the core's ``TrainLoop`` expects them.

``fit`` runs on a ``tf.data`` pipeline over the core's arrays (reshuffled each
epoch with a seed from ``train.seed``), with a callback that reports to the
core's loop: ``epoch_start`` / ``batch_end`` / ``epoch_end`` with
``train_loss, train_acc, val_loss, val_acc``, and stops ``fit`` when the loop
says so. The model ends in logits: losses are ``from_logits=True``. MLflow
autologging is never enabled (the core tracks).

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

from tle.contracts import Evaluation
from tle_keras import cache
from tle_keras.init import derived_seed
from tle_keras.runtime import keras as _keras, tf as _tf

keras = _keras()
tf = _tf()

LOSS_EVERY = 20  # batches between loss values shown by the progress bar


def make_optimizer(spec, lr: float):
    wd = spec.weight_decay or None
    if spec.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)
    if spec.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=spec.weight_decay)
    return keras.optimizers.SGD(learning_rate=lr, momentum=spec.momentum, weight_decay=wd)


def augment(x, y, seed: int):
    """Random horizontal flip per image and a random shift of up to 1/8 of the side (zeros shifted in)."""
    x = tf.image.random_flip_left_right(x, seed=seed)
    h, w = x.shape[0], x.shape[1]
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    x = tf.pad(x, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    x = tf.image.random_crop(x, (h, w, x.shape[-1]), seed=seed + 1)
    return x, y


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

    def on_epoch_begin(self, epoch, logs=None):
        self.loop.epoch_start(epoch, self.steps)

    def on_train_batch_end(self, batch, logs=None):
        shown = None
        if logs and ((batch + 1) % LOSS_EVERY == 0 or batch + 1 == self.steps):
            shown = float(logs.get("loss", math.nan))
        self.loop.batch_end(1, shown)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        metrics = {"train_loss": logs.get("loss"), "train_acc": logs.get("acc"),
                   "val_loss": logs.get("val_loss", math.nan), "val_acc": logs.get("val_acc", math.nan)}
        if self.loop.checkpoint_path is not None:
            save_checkpoint(self.loop.checkpoint_path, self.knet, self.model.optimizer, epoch + 1, self.stage)
        self.loop.epoch_end(epoch, {k: float(v) for k, v in metrics.items() if v is not None})
        if self.loop.should_stop:
            self.model.stop_training = True


def fit(knet, data, stage, spec, loop) -> dict:
    seed = derived_seed(spec.seed, "train", stage.index)
    keras.utils.set_random_seed(seed)  # dropout masks and the shuffle below
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
    model = knet.tail_model(start_block)
    if not model.trainable_weights:
        raise RuntimeError(f"stage {stage.index} of {knet.model_name} has no trainable parameters")
    optimizer = make_optimizer(spec, stage.lr)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")])
    knet.optimizer = optimizer
    # Built here, its variables exist before fit traces train_step; built inside the trace, TensorFlow
    # traces the step a second time (about a quarter of a small model's first epoch).
    optimizer.build(model.trainable_variables)
    if resumed_stage == stage.index:  # a checkpoint of an earlier stage holds another optimiser
        load_optimizer_state(loop.resume_from, optimizer, model.trainable_variables)

    n, bs = len(data.y_train), int(spec.batch_size)
    steps = math.ceil(n / bs)
    y_train = np.asarray(data.y_train, dtype=np.int64)
    train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        max(n, 1), seed=seed, reshuffle_each_iteration=True)
    if spec.augment:
        train_ds = train_ds.map(lambda x, y: augment(x, y, seed), num_parallel_calls=tf.data.AUTOTUNE)
    train_ds = train_ds.batch(bs).prefetch(tf.data.AUTOTUNE)
    val_ds = None
    if len(data.y_val):
        val_ds = tf.data.Dataset.from_tensor_slices((x_val, np.asarray(data.y_val, np.int64))).batch(bs)
    if loop.start_epoch < stage.epochs and not loop.should_stop:
        model.fit(train_ds, validation_data=val_ds, epochs=stage.epochs, initial_epoch=loop.start_epoch,
                  steps_per_epoch=steps, shuffle=False, verbose=0,
                  callbacks=[LoopBridge(loop, knet, steps, stage.index)])
    return {"cached_blocks": start_block, "optimizer": optimizer}


def evaluate(knet, images, labels, batch_size: int) -> Evaluation:
    """Float32 inference mode, batched; the loss is computed from the same logits the core scores."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    if len(x) == 0:
        return Evaluation(loss=math.nan, logits=np.zeros((0, knet.num_classes), np.float32))
    bs = max(1, int(batch_size))
    logits = np.concatenate([np.asarray(knet.net(x[i:i + bs], training=False), dtype=np.float32)
                             for i in range(0, len(x), bs)])
    if labels is None:
        return Evaluation(loss=math.nan, logits=logits)
    y = np.asarray(labels, dtype=np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    return Evaluation(loss=loss, logits=logits)
