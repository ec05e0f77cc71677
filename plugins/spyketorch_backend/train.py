"""One training stage — STDP conv1, STDP conv2, then R-STDP epochs on conv3 — and inference.

Within a stage the trainable blocks learn one after another (the model's
``phases``). The STDP phases run before the stage's first epoch, each for at
most its declared passes over the training data, stopping once the layer has
converged; their convergence measures are logged with epoch 0. Every epoch is
then one R-STDP pass: ``train_acc`` is the hit rate of the decisions R-STDP
learned from, ``convergence`` conv3's (see ``plasticity.convergence``).

R-STDP's rates adapt as in Mozafari et al.: rewards are scaled by the previous
epoch's miss rate and punishments by its hit rate (0.5 each in the first).

Batch size is the one choice batching adds: 1 applies every sample's update
before the next sample is seen (SpykeTorch's arithmetic); N sums the updates of
N samples computed with the same weights. Shuffles are seeded by (seed, stage,
phase, pass/epoch), so a run is repeatable on CPU and a resumed run continues
exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tle.contracts import Evaluation
from tle_spyketorch import layers, plasticity, registry

CONVERGED = 0.04  # plasticity.convergence below this = Kheradpisheh's C_l < 0.01
EVAL_CHUNK = 256


def configure_threads() -> None:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def seeded(seed: int, *parts: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *parts]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(max(1, batch_size)))


def save_checkpoint(path: Path, net, epoch: int, stage: int, scales) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"synapses": {b: net.synapses(b).detach().cpu() for b in ("conv1", "conv2", "head")},
                "per_class": net.per_class, "epoch": epoch, "stage": stage, "scales": list(scales)}, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


def load_checkpoint(path: Path, net) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.per_class = int(state["per_class"])
    for block, tensor in state["synapses"].items():
        weight = net.synapses(block)
        if weight.shape != tensor.shape:
            net.head = torch.nn.Parameter(tensor.clone().to(net.device), requires_grad=weight.requires_grad)
        else:
            weight.data.copy_(tensor)
    return state


def stdp_phase(net, block: str, passes: int, x: torch.Tensor, spec, stage, loop) -> dict[str, float]:
    schedule = plasticity.Schedule(every=net.arch.rate_every)
    bounds = plasticity.STDP_BOUNDS
    # The layers below the learning one are fixed during its phase: their output spikes (firing steps,
    # one byte each) are computed once, not once per pass.
    chunks = range(0, len(x), EVAL_CHUNK)
    inputs = torch.cat([net.block_input(block, x[i:i + EVAL_CHUNK]).to(torch.uint8)
                        for i in loop.track(chunks, len(chunks), f"  coding the input of {block}")])
    seen, done = 0, 0
    for p in range(passes):
        order = batch_indices(len(x), spec.batch_size, seeded(spec.seed, stage.index, 1 + BLOCK_INDEX[block], p))
        for idx in loop.track(order, len(order), f"  STDP {block} pass {p + 1}/{passes}"):
            net.learn(block, inputs[idx.to(inputs.device)].long(), schedule.rates(seen))
            seen += len(idx)
        done = p + 1
        if plasticity.convergence(net.synapses(block).data, bounds) < CONVERGED:
            break
    return {f"{block}_convergence": plasticity.convergence(net.synapses(block).data, bounds),
            f"{block}_stdp_passes": float(done)}


BLOCK_INDEX = {"conv1": 0, "conv2": 1}


def fit(net, data, stage, spec, loop) -> dict:
    configure_threads()
    device = net.device
    phases = [p for p in registry.phases(net.arch) if stage.trainable.get(p.block)]
    scales = (0.5, 0.5)
    skip_stdp = False
    if loop.resume_from is not None:
        state = load_checkpoint(loop.resume_from, net)
        # A checkpoint of this very stage was written after an R-STDP epoch: the STDP phases are done.
        if int(state.get("stage", -1)) == stage.index and loop.start_epoch > 0:
            skip_stdp = True
            scales = tuple(state.get("scales", scales))
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32)).to(device)
    y = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64)).to(device)
    first = {}
    if not skip_stdp:
        for phase in phases:
            if phase.passes is not None:
                first.update(stdp_phase(net, phase.block, phase.passes, x, spec, stage, loop))
    # conv1-conv2 are fixed from here on and conv3 reads only their last step: their output is computed
    # once for the whole R-STDP phase (the core's frozen-prefix rule), one byte per spike.
    hidden = hidden_spikes(net, x, loop, "train")
    x_val = torch.from_numpy(np.ascontiguousarray(data.x_val, dtype=np.float32)).to(device)
    hidden_val = hidden_spikes(net, x_val, loop, "val")
    for epoch in range(loop.start_epoch, stage.epochs):
        if loop.should_stop:
            break
        order = batch_indices(len(y), spec.batch_size, seeded(spec.seed, stage.index, 0, epoch))
        loop.epoch_start(epoch, len(order))
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for idx in order:
            idx = idx.to(device)
            logits = net.rstdp_from(hidden[idx].to(torch.float32), y[idx], scales)
            loss_sum += F.cross_entropy(logits, y[idx], reduction="sum")
            correct += (logits.argmax(1) == y[idx]).sum()
            loop.batch_end(1)
        hit = float(correct) / max(len(y), 1)
        scales = (1.0 - hit, hit)
        val = score(net, [hidden_val[i:i + EVAL_CHUNK] for i in range(0, len(hidden_val), EVAL_CHUNK)], data.y_val)
        metrics = {"train_loss": float(loss_sum) / max(len(y), 1), "train_acc": hit, "val_loss": val.loss,
                   "val_acc": float((val.predictions == data.y_val).mean()) if len(data.y_val) else math.nan,
                   "convergence": plasticity.convergence(net.head.data, plasticity.RSTDP_BOUNDS),
                   "val_silent_rate": val.extras["silent_rate"]}
        if epoch == loop.start_epoch:
            metrics.update(first)
        if loop.checkpoint_path is not None:
            save_checkpoint(loop.checkpoint_path, net, epoch + 1, stage.index, scales)
        loop.epoch_end(epoch, metrics)
    return {"phases": [p.block for p in phases], "stdp": first}


def hidden_spikes(net, x: torch.Tensor, loop, name: str) -> torch.Tensor:
    chunks = range(0, len(x), EVAL_CHUNK)
    parts = [net.hidden_spikes(x[i:i + EVAL_CHUNK]).to(torch.bool)
             for i in loop.track(chunks, len(chunks), f"  conv1-conv2 spikes of the {name} images")]
    if not parts:
        return torch.zeros((0, net.arch.maps2, 1, 1), dtype=torch.bool, device=net.device)
    return torch.cat(parts)


@torch.no_grad()
def score(net, hidden_chunks, labels) -> Evaluation:
    """Class scores = the largest final potential among each class's neurons; silent images (no conv3
    potential above 0) and how often each conv3 neuron decided (S2's Fig. 2) come as extras."""
    scores, counts, silent, n = [], torch.zeros(net.head.shape[0], dtype=torch.int64), 0, 0
    for spikes in hidden_chunks:
        pot = layers.conv_final(spikes.to(torch.float32), net.head).flatten(2).amax(dim=2)
        value, winner = pot.max(dim=1)
        fired = value > 0
        counts += torch.bincount(winner[fired].cpu(), minlength=len(counts))
        silent += int((~fired).sum())
        n += len(pot)
        scores.append(net.class_scores(pot[:, :, None]).cpu())
    logits = torch.cat(scores) if scores else torch.zeros((0, net.num_classes))
    loss = math.nan
    if labels is not None and n:
        loss = float(F.cross_entropy(logits, torch.from_numpy(np.asarray(labels, dtype=np.int64))))
    return Evaluation(loss=loss, logits=logits.numpy(),
                      extras={"silent_rate": silent / max(n, 1), "firing_counts": counts.tolist()})


@torch.no_grad()
def evaluate(net, images, labels, batch_size: int) -> Evaluation:
    configure_threads()
    x = np.ascontiguousarray(images, dtype=np.float32)
    chunk = max(int(batch_size), EVAL_CHUNK)
    hidden = (net.hidden_spikes(torch.from_numpy(x[i:i + chunk]).to(net.device)) for i in range(0, len(x), chunk))
    return score(net, hidden, labels)
