"""One training stage and inference, as the core's ``TrainLoop`` expects them.

Determinism: each epoch's shuffle and dropout draw from generators seeded by
``(train.seed, stage, epoch)``, so a run is repeatable on CPU and a resumed run
continues with the very batches and dropout masks an uninterrupted one would
have used. A DataLoader feeds the batches (pinned memory on CUDA) with a
BatchSampler, so each batch is one slice of the core's in-memory arrays rather
than a per-image fetch and collate: the engine costs nothing over a hand loop.

On CUDA: ``precision`` auto/bf16 -> bf16 autocast, fp16 -> fp16 autocast with a
GradScaler; channels_last memory format. On CPU: float32 always.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from tle.contract.records import Evaluation, Trained
from tle_torch import cache, distributed
from tle_torch.params import kinds
from tle_torch.device import configure_threads

LOSS_EVERY = 20  # batches between loss values shown by the progress bar (each one syncs the GPU)


def device_of(net) -> torch.device:
    return next(net.parameters()).device


def amp_dtype(precision: str, device: torch.device):
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else None


def autocast_factory(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class Batches(Dataset):
    """Indexed by a whole batch of positions (see ``ShuffledBatches``): one slice, no per-image collate."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: torch.Tensor):
        return self.x[idx], self.y[idx]


class ShuffledBatches(Sampler):
    """A seeded permutation cut into batches of positions (what RandomSampler + BatchSampler yield,
    without building each batch one int at a time).

    A lone last position joins the batch before it: BatchNorm cannot train on one value per
    channel, and dropping it would lose an image every epoch.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __len__(self) -> int:
        return count_batches(self.n, self.batch_size)

    def __iter__(self):
        parts = list(torch.randperm(self.n, generator=self.generator).split(self.batch_size))
        if len(parts) > 1 and len(parts[-1]) == 1:
            parts[-2:] = [torch.cat(parts[-2:])]
        return iter(parts)


def count_batches(n: int, batch_size: int) -> int:
    full = math.ceil(n / batch_size)
    return full - 1 if full > 1 and n % batch_size == 1 else full


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator, device,
            parts: list[torch.Tensor] | None = None) -> DataLoader:
    """One epoch's batches; ``parts``: a DDP rank's own batches of positions (see ``distributed.shard``)."""
    pin = device.type == "cuda" and x.device.type == "cpu"
    sampler = parts if parts is not None else ShuffledBatches(len(y), batch_size, generator)
    return DataLoader(Batches(x, y), sampler=sampler, batch_size=None, collate_fn=_as_is, pin_memory=pin)


def _as_is(batch):
    # The batch is already a pair of tensors; default_convert would only walk it again.
    return batch


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stage, epoch]).generate_state(1)[0])


# Keras's Adam epsilon, so that one spec means the same optimiser in both backends.
ADAM_EPS = 1e-7


def make_optimizer(spec, params, lr: float):
    """``params``: parameters, or parameter groups (dicts with their own ``lr``)."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, eps=ADAM_EPS, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, eps=ADAM_EPS, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def param_groups(net, stage) -> list[dict]:
    """One optimiser group per block that trains in ``stage`` (the head last), at the stage's rate times the
    block's factor (``train.lr_decay``); ``lr_factor`` stays in the group, so each epoch's rate is
    ``stage.rate(epoch) * lr_factor`` (``train.schedule``). Blocks without a trainable parameter are left out."""
    groups = []
    for block in net.trainable:
        params = [p for p in net.module_of(block).parameters() if p.requires_grad]
        if params:
            factor = stage.factor(block)
            groups.append({"params": params, "lr": stage.lr * factor, "lr_factor": factor, "block": block})
    return groups


def set_rate(optimizer, rate: float) -> float:
    """Every group at ``rate`` times its factor; returns the head's (the last group's) rate."""
    for group in optimizer.param_groups:
        group["lr"] = rate * group["lr_factor"]
    return optimizer.param_groups[-1]["lr"]


class Pull:
    """L2-SP's gradient (``tle.contract.tuning``): α(w − w⁰) on the parameters of blocks that start pretrained,
    βw on the others, added to each trainable parameter's gradient before the optimiser's step. w⁰ is what the
    net held when ``fit`` first ran on it (``net.l2sp_start``, kept beside the module: never saved or exported)."""

    def __init__(self, net, stage):
        if getattr(net, "l2sp_start", None) is None:
            net.l2sp_start = {name: p.detach().clone() for name, p in net.named_parameters()}
        start = net.l2sp_start
        self.terms: list[tuple[torch.Tensor, torch.Tensor | None, float]] = []
        for block in net.trainable:
            strength, toward_start = stage.l2sp.pull(block)
            prefix = "head." if block == "head" else f"body.{block}."
            for name, p, _ in kinds(net.module_of(block)):
                if p.requires_grad and strength:
                    self.terms.append((p, start[prefix + name] if toward_start else None, float(strength)))

    @torch.no_grad()
    def add_to_gradients(self) -> None:
        for p, anchor, strength in self.terms:
            if p.grad is not None:
                p.grad.add_(p - anchor if anchor is not None else p, alpha=strength)


def augment(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip per image and one random shift (up to 1/8 of the side) per batch, NHWC."""
    n, h, w, _ = xb.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(xb.device)
    xb = torch.where(flip.view(n, 1, 1, 1), xb.flip(2), xb)
    dy, dx = (int(v) for v in torch.randint(-(h // 8), h // 8 + 1, (2,), generator=generator))
    if dy or dx:
        xb = torch.roll(xb, shifts=(dy, dx), dims=(1, 2))
        if dy > 0:
            xb[:, :dy] = 0
        elif dy < 0:
            xb[:, dy:] = 0
        if dx > 0:
            xb[:, :, :dx] = 0
        elif dx < 0:
            xb[:, :, dx:] = 0
    return xb


def save_checkpoint(path: Path, net, optimizer, scaler, epoch: int, stage: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "stage": stage,
                "scaler": scaler.state_dict() if scaler is not None else None}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


def load_checkpoint(path: Path, net, optimizer, scaler, stage: int) -> int:
    state = torch.load(path, map_location=device_of(net), weights_only=True)
    net.load_state_dict(state["model"])
    # An optimiser's state belongs to the stage (and parameter set) that wrote it: a resumed run that
    # starts a new stage from the previous stage's last checkpoint begins with a fresh optimiser.
    if int(state.get("stage", stage)) == stage:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    return int(state.get("epoch", 0))


@dataclass(frozen=True)
class Inference:
    """How a pass in inference mode runs: ``forward`` (the net, or its part after a cached prefix) of ``net``,
    ``batch_size`` images at a time on ``device`` under ``autocast``."""

    forward: Callable
    net: torch.nn.Module
    batch_size: int
    device: torch.device
    autocast: Callable = contextlib.nullcontext


@dataclass
class StageRun:
    """One stage on its way through :func:`_epochs`: the net and how it steps, the stage's arrays, the ranks."""

    net: torch.nn.Module
    stage: Any
    spec: Any
    loop: Any
    optimizer: torch.optim.Optimizer
    scaler: Any  # a GradScaler under fp16, else None
    pull: Pull | None  # L2-SP
    inference: Inference  # validation: never through DDP, the ranks' shares of it may differ by a batch
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: Any
    y_val: torch.Tensor
    start_block: int | None = None  # blocks served from the cache, None without one
    rank: int = 0
    size: int = 1


@dataclass
class EpochSums:
    """One epoch's training sums on this rank."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0


def fit(net, data, stage, spec, loop) -> Trained:
    configure_threads()
    device = device_of(net)
    dtype = amp_dtype(spec.precision, device)
    autocast = autocast_factory(device, dtype)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    groups = param_groups(net, stage)
    if not groups:
        raise RuntimeError(f"stage {stage.index} of {net.model_name} has no trainable parameters")
    optimizer = make_optimizer(spec, groups, stage.lr)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    pull = Pull(net, stage) if stage.l2sp is not None else None  # before a checkpoint replaces the start
    if loop.resume_from is not None:
        load_checkpoint(loop.resume_from, net, optimizer, scaler, stage.index)

    images = [np.ascontiguousarray(data.x_train, dtype=np.float32), np.ascontiguousarray(data.x_val, dtype=np.float32)]
    y_train = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
    y_val = torch.from_numpy(np.asarray(data.y_val, dtype=np.int64))
    start_block = net.frozen_prefix() if spec.cache_features and not spec.augment else 0
    cached = None
    if start_block:
        cached = cache.frozen_features(cache.Prefix(net, start_block, spec.batch_size, device, autocast), images,
                                        loop.track)
    if cached is not None:
        x_train, x_val = cached
        forward = lambda xb: net.forward_from(xb, start_block)  # noqa: E731
    else:
        x_train, x_val = (torch.from_numpy(a) for a in images)
        forward = net

    rank, size = distributed.world()
    run = StageRun(net, stage, spec, loop, optimizer, scaler, pull, Inference(forward, net, spec.batch_size, device,
                                                                                autocast),
                   x_train, y_train, x_val, y_val, start_block if cached is not None else None, rank, size)
    swapped = distributed.sync_batchnorm(net) if size > 1 and spec.distributed.sync_batchnorm else []
    try:
        ran = _epochs(run)
    finally:
        distributed.unsync_batchnorm(swapped)
    return Trained(epochs=ran, stopped_early=loop.start_epoch + ran < stage.epochs,
                   metrics={"cached_blocks": float(start_block if cached is not None else 0)})


def _epochs(run: StageRun) -> int:
    """The stage's epochs from ``loop.start_epoch`` until the last or ``loop.should_stop``; returns how many ran.

    Under DDP the trainable part is wrapped anew for each stage (each call of ``fit``): what trains changes
    between stages, and DDP registers its parameters once, when it wraps them."""
    net, stage, spec, loop, device = run.net, run.stage, run.spec, run.loop, run.inference.device
    ran = 0
    n, bs = len(run.y_train), spec.batch_size
    n_batches = count_batches(n, bs)
    forward = run.inference.forward
    if run.size > 1:
        forward = distributed.replicate(net if run.start_block is None else distributed.From(net, run.start_block),
                                        device)
    for epoch in range(loop.start_epoch, stage.epochs):
        if loop.should_stop:
            break
        seed = epoch_seed(spec.seed, stage.index, epoch)
        shuffle = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed + run.rank)  # dropout masks (each replica draws its own)
        parts = distributed.shard(n, bs, seed) if run.size > 1 else None
        if parts is not None:
            n_batches = len(parts)
        rate = set_rate(run.optimizer, stage.rate(epoch))
        loop.epoch_start(epoch, n_batches)
        net.train()
        sums = EpochSums(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.int64))
        for b, (xb, yb) in enumerate(batches(run.x_train, run.y_train, bs, shuffle, device, parts)):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            if spec.augment:
                xb = augment(xb, shuffle)
            with run.inference.autocast():
                logits = forward(xb)
            loss = F.cross_entropy(logits.float(), yb)
            _step(run, loss)
            sums.loss += loss.detach() * len(yb)
            sums.correct += (logits.detach().argmax(1) == yb).sum()
            sums.seen += len(yb)
            shown = float(loss.detach()) if (b + 1) % LOSS_EVERY == 0 or b + 1 == n_batches else None
            loop.batch_end(1, shown)
        metrics = _mean_over_ranks(run, sums) if run.size > 1 else _metrics(run, sums)
        metrics["lr"] = rate
        if loop.checkpoint_path is not None and run.rank == 0:  # the replicas are equal; rank 0 tracks the run
            save_checkpoint(loop.checkpoint_path, net, run.optimizer, run.scaler, epoch + 1, stage.index)
        loop.epoch_end(epoch, metrics)
        ran += 1
    return ran


def _step(run: StageRun, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss``'s gradient, L2-SP's added (after a GradScaler has unscaled it)."""
    optimizer, scaler = run.optimizer, run.scaler
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if run.pull is not None:
            scaler.unscale_(optimizer)
            run.pull.add_to_gradients()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if run.pull is not None:
            run.pull.add_to_gradients()
        optimizer.step()


def _metrics(run: StageRun, sums: EpochSums) -> dict:
    n, y_val = len(run.y_train), run.y_val
    val_loss, val_logits = _infer(run.inference, run.x_val, y_val)
    return {"train_loss": float(sums.loss) / max(n, 1), "train_acc": float(sums.correct) / max(n, 1),
            "val_loss": val_loss,
            "val_acc": float((val_logits.argmax(1) == y_val).float().mean()) if len(y_val) else math.nan}


def _mean_over_ranks(run: StageRun, sums: EpochSums) -> dict:
    """The epoch's metrics over every rank's images: each rank validates its share of the validation split, and
    one all_reduce sums the counts, so the numbers are those of all the images, whatever the shares' sizes."""
    device, rank, size = run.inference.device, run.rank, run.size
    x, y = run.x_val[rank::size], run.y_val[rank::size]
    val_loss, val_logits = _infer(run.inference, x, y)
    val_sum = torch.tensor(val_loss * len(y) if len(y) else 0.0)
    val_correct = (val_logits.argmax(1) == y).sum() if len(y) else torch.tensor(0)
    loss_sum, correct, seen, val_sum, val_correct, n_val = distributed.all_sum(
        sums.loss, sums.correct, torch.tensor(sums.seen), val_sum.to(device), val_correct.to(device),
        torch.tensor(len(y), device=device))
    return {"train_loss": float(loss_sum / seen.clamp(min=1)), "train_acc": float(correct / seen.clamp(min=1)),
            "val_loss": float(val_sum / n_val) if n_val else math.nan,
            "val_acc": float(val_correct / n_val) if n_val else math.nan}


@torch.no_grad()
def _infer(inference: Inference, x, y) -> tuple[float, torch.Tensor]:
    net, batch_size, device = inference.net, inference.batch_size, inference.device
    was = net.training
    net.eval()
    try:
        total = 0.0
        outs = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            xb = torch.from_numpy(xb) if isinstance(xb, np.ndarray) else xb
            with inference.autocast():
                logits = inference.forward(xb.to(device, non_blocking=True)).float()
            if y is not None:
                total += float(F.cross_entropy(logits, y[i:i + batch_size].to(device), reduction="sum"))
            outs.append(logits.cpu())
        logits = torch.cat(outs) if outs else torch.zeros((0, net.num_classes))
        return (total / len(x) if len(x) and y is not None else math.nan), logits
    finally:
        net.train(was)


def evaluate(net, images, labels, batch_size: int) -> Evaluation:
    """Float32 inference (no autocast), so the logits are what the exported ONNX graph must reproduce."""
    configure_threads()
    device = device_of(net)
    x = np.ascontiguousarray(images, dtype=np.float32)
    y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    loss, logits = _infer(Inference(net, net, max(1, int(batch_size)), device), x, y)
    return Evaluation(loss=loss, logits=logits.numpy())
