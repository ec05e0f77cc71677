"""Mini-batch training driven by the core's loop, and batched inference."""

from __future__ import annotations

import math

import numpy as np

from tle.contract.records import Evaluation, Trained
from tle_numpy import checkpoint
from tle_numpy.model import HEAD, Net, softmax_cross_entropy
from tle_numpy.optim import make_optimizer


def fit(net: Net, data, stage, train, loop) -> Trained:
    """Train ``net`` for one stage; returns how many epochs ran (the loop has their metrics already)."""
    # The stage is the plan's word on freezing; the core's freeze_policy call said the same.
    net.trainable = {block: stage.trainable.get(block) is True for block in net.blocks}
    optimizer = make_optimizer(train.optimizer, stage.lr, train.weight_decay, train.momentum)
    if stage.l2sp is not None and net.l2sp_start is None:  # L2-SP's w⁰, before a checkpoint replaces it
        net.l2sp_start = {f"{layer.name}.{k}": getattr(layer, k).copy() for layer in net.layers for k in ("W", "b")}
    if loop.resume_from is not None:
        checkpoint.restore(net, optimizer, loop.resume_from, stage.index)
    x_train, y_train = net.flatten(data.x_train), np.asarray(data.y_train, dtype=np.int64)
    x_val, y_val = net.flatten(data.x_val), np.asarray(data.y_val, dtype=np.int64)
    start = frozen_prefix(net) if train.cache_features else 0
    if start:
        # Frozen leading layers without dropout give the same output every epoch: run them once.
        x_train, x_val = net.forward(x_train, stop=start), net.forward(x_val, stop=start)

    n, size = len(y_train), train.batch_size
    ran = 0
    for epoch in range(loop.start_epoch, stage.epochs):
        optimizer.lr = stage.rate(epoch)
        loop.epoch_start(epoch, math.ceil(n / size))
        # Seeded by epoch, so a resumed run shuffles as the uninterrupted one would.
        rng = np.random.default_rng((train.seed + epoch) % 2**32)
        order = rng.permutation(n)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, size):
            batch = order[i:i + size]
            cache: list = []
            logits = net.forward(x_train[batch], start, rng=rng, cache=cache)
            loss, grad = softmax_cross_entropy(logits, y_train[batch])
            optimizer.step(updates(net, stage, net.backward(cache, grad, start)))
            loss_sum += loss * len(batch)
            correct += int((logits.argmax(axis=1) == y_train[batch]).sum())
            loop.batch_end()
        val = predict(net, x_val, y_val, size, start)
        val_acc = float((val.predictions == y_val).mean()) if len(y_val) else math.nan
        metrics = {"train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1),
                   "val_loss": val.loss, "val_acc": val_acc, "lr": optimizer.lr}
        if loop.checkpoint_path is not None:
            checkpoint.save(net, optimizer, stage.index, epoch, loop.checkpoint_path)
        loop.epoch_end(epoch, metrics)
        ran += 1
        if loop.should_stop:
            break
    return Trained(epochs=ran, stopped_early=loop.start_epoch + ran < stage.epochs)


def updates(net: Net, stage, grads) -> list:
    """The optimiser's updates from ``grads`` ((layer, dW, db) of the trainable layers): each array that trains
    under ``train.params`` (a layer's bias is its ``bias``, there is no normalisation layer; the head trains
    whole), with L2-SP's α(w − w⁰) or βw added to its gradient and its block's rate factor."""
    out = []
    for layer, d_w, d_b in grads:
        for kind, param, g in (("W", layer.W, d_w), ("b", layer.b, d_b)):
            if not trains(layer.block, kind, net.params):
                continue
            name = f"{layer.name}.{kind}"
            if stage.l2sp is not None:
                strength, toward_start = stage.l2sp.pull(layer.block)
                if strength:
                    g = g + np.float32(strength) * (param - net.l2sp_start[name] if toward_start else param)
            out.append((name, param, g, stage.factor(layer.block)))
    return out


def trains(block: str, kind: str, params: str) -> bool:
    return block == HEAD or params == "all" or (kind == "b" and "bias" in params)


def frozen_prefix(net: Net) -> int:
    """How many leading layers are frozen and deterministic (no dropout)."""
    end = net.first_trainable()
    return next((i for i, layer in enumerate(net.layers[:end]) if layer.dropout > 0), end)


def evaluate(net: Net, images: np.ndarray, labels: np.ndarray | None, batch_size: int) -> Evaluation:
    return predict(net, net.flatten(images), labels, batch_size)


def predict(net: Net, x: np.ndarray, labels: np.ndarray | None, batch_size: int, start: int = 0) -> Evaluation:
    """Inference on ``x``, the input of layer ``start``, ``batch_size`` rows at a time."""
    logits = np.empty((len(x), net.num_classes), dtype=np.float32)
    for i in range(0, len(x), batch_size):
        logits[i:i + batch_size] = net.forward(x[i:i + batch_size], start)
    if labels is None or not len(x):
        return Evaluation(loss=math.nan, logits=logits)
    loss, _ = softmax_cross_entropy(logits, np.asarray(labels, dtype=np.int64))
    return Evaluation(loss=loss, logits=logits)
