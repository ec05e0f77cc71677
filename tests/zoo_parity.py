"""Both sides of the torch <-> Keras weight parity checks (tests/test_keras_torchvision_zoo.py,
benchmarks/keras_zoo_parity.py).

TensorFlow and torch never share a process (DESIGN.md, known facts): the torch
side runs as ``python tests/zoo_parity.py torch|load CASES.json DIR`` in a
process of its own (``run_torch``) and exchanges ``.npz`` files with the Keras side:

* for each case, the torch backend's model (``tle_torch.models.build``:
  torchvision's model cut into blocks, the head, ImageNet mean/std) with random
  weights and random BatchNorm statistics, its logits on a fixed batch, its
  weights under portable keys (torchvision's, ``head.`` + the head path) and its
  parameter counts per block -> ``DIR/<case>.npz``;
* ``back``: reads ``DIR/<case>.keras.npz`` (portable weights + the batch written
  by the Keras side), loads them into the torch model and writes its logits to
  ``DIR/<case>.torch_logits.npy``;
* ``plans``: the torch backend's ``tle plan --json``; ``pools``: torch's
  adaptive average pooling on random maps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tle.contract.records import Blueprint

CLASSES = 10
BATCH = 2


def case_id(case) -> str:
    model, size, head = case[:3]
    return f"{model}-{size}-{head}"


def _torch_net(model: str, size: int, head: str, seed: int = 0):
    from tle.contract.records import ResolvedWeights
    from tle.contract.spec import HeadSpec
    from tle_torch.models import build

    net = build(Blueprint(model, tuple(str(i) for i in range(CLASSES)), (size, size, 3), HeadSpec(kind=head),
                          seed=seed),
                ResolvedWeights(kind="none"))
    return net.eval()


def _portable_key(net, key: str) -> str:
    return key if key.startswith("head.") else net.torchvision_name(key)


def randomise_torch(net) -> None:
    """Non-trivial BatchNorm (statistics and affine far from 0/1, so a swapped or dropped array shows), biases,
    and logits of order one: the last BatchNorm of each residual branch damped (else 50 random residual units
    grow the signal to 1e7 and an absolute tolerance means nothing) and every Linear Glorot-drawn (the original
    head's N(0, 0.01) layer gives logits of 0.05)."""
    import torch
    from torchvision.models.resnet import BasicBlock, Bottleneck

    with torch.no_grad():
        last = set()
        for m in net.modules():
            if isinstance(m, BasicBlock):
                last.add(m.bn2)
            elif isinstance(m, Bottleneck):
                last.add(m.bn3)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.1, 0.3) if m in last else m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            elif isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)


def torch_side(cases, out: Path) -> None:
    import torch

    from tle_torch.plugin import count_parameters

    torch.set_num_threads(1)
    for case in cases:
        model, size, head = case[:3]
        torch.manual_seed(1)
        net = _torch_net(model, size, head)
        randomise_torch(net)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (BATCH, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            logits = net(torch.from_numpy(x)).numpy()
        arrays = {_portable_key(net, k): v.detach().numpy() for k, v in net.state_dict().items()
                  if not k.endswith("num_batches_tracked")}
        counts = [(c.name, c.total, c.trainable) for c in count_parameters(model=net)]
        np.savez(out / f"{case_id(case)}.npz", __x__=x, __logits__=logits,
                 __counts__=np.frombuffer(json.dumps(counts).encode(), dtype=np.uint8), **arrays)


POOLS = ((5, 7), (3, 6), (13, 7), (1, 7), (7, 7), (9, 6), (2, 6))  # (input side, output side)


def pool_side(cases, out: Path) -> None:
    """torch's adaptive_avg_pool2d on random maps (NHWC in the file), for the Keras AdaptiveAvgPool layer."""
    import torch

    rng = np.random.default_rng(3)
    result = {}
    for side, size in POOLS:
        x = rng.normal(size=(2, side, side + 1, 4)).astype(np.float32)
        y = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), size)
        result[f"x{side}_{size}"], result[f"y{side}_{size}"] = x, y.permute(0, 2, 3, 1).numpy()
    np.savez(out / "pools.npz", **result)


def load_side(cases, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    for case in cases:
        model, size, head = case[:3]
        net = _torch_net(model, size, head)
        with np.load(out / f"{case_id(case)}.keras.npz") as data:
            arrays = {k: data[k] for k in data.files}
        state = {}
        for key, value in net.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            name = _portable_key(net, key)
            if name not in arrays:
                raise SystemExit(f"{case_id(case)}: the Keras side wrote no {name}")
            if tuple(arrays[name].shape) != tuple(value.shape):
                raise SystemExit(f"{case_id(case)}: {name} is {arrays[name].shape}, torch has {tuple(value.shape)}")
            state[key] = torch.from_numpy(arrays[name])
        net.load_state_dict(state, strict=False)
        with torch.no_grad():
            logits = net(torch.from_numpy(arrays["__x__"])).numpy()
        np.save(out / f"{case_id(case)}.torch_logits.npy", logits)


def plan_side(models, out: Path) -> None:
    """``tle plan --json`` of the torch backend for ``models`` -> ``DIR/plans.json``."""
    from typer.testing import CliRunner

    from tle.cli import app

    plans = {}
    for model in models:
        result = CliRunner().invoke(app, plan_args(model, "torch"))
        assert result.exit_code == 0, (model, result.output, result.exception)
        plans[model] = json.loads(result.stdout.strip().splitlines()[-1])
    (out / "plans.json").write_text(json.dumps(plans))


def plan_args(model: str, backend: str, size: int | None = None) -> list[str]:
    size = size or (64 if model == "alexnet" else 32)  # AlexNet needs 63 px
    return ["plan", "--backend", backend, "--model", model, "--strategy", "finetune:block5",
            "--image-size", str(size), "--json"]


def run_torch(out: Path, cases=(), back=(), plans=(), pools: bool = False, timeout: int = 900) -> None:
    """The torch side in one plain Python process (no TensorFlow in it): ``load`` the Keras side's files of
    ``back``, write the torch models of ``cases``, the plans of ``plans`` and the pooling checks."""
    import os
    import subprocess

    job = out / "job.json"
    job.write_text(json.dumps({"cases": [list(c) for c in cases], "back": [list(c) for c in back],
                               "plans": list(plans), "pools": pools}))
    proc = subprocess.run([sys.executable, __file__, str(job), str(out)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]


# -- the Keras side (imported in a process with TensorFlow) ---------------------------------------------


def keras_net(model: str, size: int, head: str, seed: int = 0):
    from tle.contract.records import ResolvedWeights
    from tle.contract.spec import HeadSpec
    from tle_keras import plugin

    return plugin.load_backbone(blueprint=Blueprint(model=model, class_names=[str(i) for i in range(CLASSES)],
                                                    input_shape=(size, size, 3), head=HeadSpec(kind=head),
                                                    device="cpu", precision="fp32", seed=seed),
                                weights=ResolvedWeights(kind="none"))


def read_torch(case, out: Path):
    """(portable arrays, batch, torch logits, torch counts per block) the torch side wrote for ``case``."""
    with np.load(out / f"{case_id(case)}.npz") as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("__")}
        return arrays, data["__x__"], data["__logits__"], [tuple(c) for c in json.loads(bytes(data["__counts__"]))]


def keras_counts(knet) -> list[tuple]:
    from tle_keras.plugin import count_parameters

    return [(c.name, c.total, c.trainable) for c in count_parameters(model=knet)]


def randomise_keras(knet, seed: int = 2) -> None:
    """Random BatchNorm statistics/affine, biases and Dense kernels in a Keras model (keras -> torch)."""
    rng = np.random.default_rng(seed)
    for layer in knet.net.layers:
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(lo, hi, a.shape).astype(np.float32) for a, (lo, hi) in
                               zip((gamma, beta, mean, var), ((0.5, 1.5), (-0.2, 0.2), (-0.2, 0.2), (0.5, 1.5)))])
        elif kind in ("Conv2D", "Dense") and layer.use_bias:
            kernel, bias = layer.get_weights()
            if kind == "Dense":  # Glorot, as randomise_torch: the original head's N(0, 0.01) gives tiny logits
                limit = np.sqrt(6.0 / sum(kernel.shape))
                kernel = rng.uniform(-limit, limit, kernel.shape).astype(np.float32)
            layer.set_weights([kernel, rng.uniform(-0.1, 0.1, bias.shape).astype(np.float32)])


def write_keras(case, knet, out: Path, seed: int) -> np.ndarray:
    """Random weights in the Keras model of ``case``; its portable arrays and batch for the torch side to load;
    return its logits."""
    from tle_keras import portable

    randomise_keras(knet, seed)
    x = np.random.default_rng(5).uniform(0, 1, (BATCH, case[1], case[1], 3)).astype(np.float32)
    np.savez(out / f"{case_id(case)}.keras.npz", __x__=x, **portable.to_portable(knet))
    return np.asarray(knet.net(x, training=False))


if __name__ == "__main__":
    spec, directory = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    load_side([tuple(c) for c in spec["back"]], directory)
    torch_side([tuple(c) for c in spec["cases"]], directory)
    plan_side(spec["plans"], directory)
    if spec["pools"]:
        pool_side([], directory)
