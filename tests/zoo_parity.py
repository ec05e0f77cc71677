"""Both sides of the torch <-> Keras weight parity checks (tests/test_keras_torchvision_zoo.py,
benchmarks/keras_zoo_parity.py).

TensorFlow and torch never share a process (DESIGN.md, known facts): the torch
side runs as ``python tests/zoo_parity.py torch|load CASES.json DIR`` in a
process of its own and exchanges ``.npz`` files with the Keras side:

* ``torch``: for each case, the torch backend's model (``tle_torch.models.build``:
  torchvision's model cut into blocks, the head, ImageNet mean/std) with random
  weights and random BatchNorm statistics, its logits on a fixed batch, its
  weights under portable keys (torchvision's, ``head.`` + the head path) and its
  parameter counts per block -> ``DIR/<case>.npz``;
* ``load``: reads ``DIR/<case>.keras.npz`` (portable weights + the batch written
  by the Keras side), loads them into the torch model and writes its logits to
  ``DIR/<case>.torch_logits.npy``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

CLASSES = 10
BATCH = 2


def case_id(case) -> str:
    model, size, head = case[:3]
    return f"{model}-{size}-{head}"


def _torch_net(model: str, size: int, head: str, seed: int = 0):
    from tle.contracts import ResolvedWeights
    from tle.spec import HeadSpec
    from tle_torch.models import build

    net = build(model, CLASSES, [str(i) for i in range(CLASSES)], (size, size, 3), HeadSpec(kind=head),
                ResolvedWeights(kind="none"), seed)
    return net.eval()


def _portable_key(net, key: str) -> str:
    return key if key.startswith("head.") else net.torchvision_name(key)


def torch_side(cases, out: Path) -> None:
    import torch

    from tle_torch.plugin import count_parameters

    torch.set_num_threads(1)
    for case in cases:
        model, size, head = case[:3]
        torch.manual_seed(1)
        net = _torch_net(model, size, head)
        with torch.no_grad():
            # Non-trivial BatchNorm: statistics and affine far from 0/1, so a swapped or dropped array shows.
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (BATCH, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            logits = net(torch.from_numpy(x)).numpy()
        arrays = {_portable_key(net, k): v.detach().numpy() for k, v in net.state_dict().items()
                  if not k.endswith("num_batches_tracked")}
        counts = [(c.name, c.total, c.trainable) for c in count_parameters(model=net)]
        np.savez(out / f"{case_id(case)}.npz", __x__=x, __logits__=logits,
                 __counts__=np.frombuffer(json.dumps(counts).encode(), dtype=np.uint8), **arrays)


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


def run_torch(mode: str, cases, out: Path, timeout: int = 600) -> None:
    """The torch side in a plain Python process (no TensorFlow in it)."""
    import os
    import subprocess

    spec = out / f"cases-{mode}.json"
    spec.write_text(json.dumps([list(c) for c in cases]))
    proc = subprocess.run([sys.executable, __file__, mode, str(spec), str(out)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]


# -- the Keras side (imported in a process with TensorFlow) ---------------------------------------------


def keras_net(model: str, size: int, head: str, seed: int = 0):
    from tle.contracts import ResolvedWeights
    from tle.spec import HeadSpec
    from tle_keras import plugin

    return plugin.load_backbone(model=model, num_classes=CLASSES, class_names=[str(i) for i in range(CLASSES)],
                                input_shape=(size, size, 3), head=HeadSpec(kind=head),
                                weights=ResolvedWeights(kind="none"), device="cpu", precision="fp32", seed=seed)


def read_torch(case, out: Path):
    """(portable arrays, batch, torch logits, torch counts per block) the torch side wrote for ``case``."""
    with np.load(out / f"{case_id(case)}.npz") as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("__")}
        return arrays, data["__x__"], data["__logits__"], [tuple(c) for c in json.loads(bytes(data["__counts__"]))]


def keras_counts(knet) -> list[tuple]:
    from tle_keras.plugin import count_parameters

    return [(c.name, c.total, c.trainable) for c in count_parameters(model=knet)]


def randomise_keras(knet, seed: int = 2) -> None:
    """Random BatchNorm statistics/affine and biases in a Keras model (the keras -> torch direction)."""
    rng = np.random.default_rng(seed)
    for layer in knet.net.layers:
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(lo, hi, a.shape).astype(np.float32) for a, (lo, hi) in
                               zip((gamma, beta, mean, var), ((0.5, 1.5), (-0.2, 0.2), (-0.2, 0.2), (0.5, 1.5)))])
        elif kind in ("Conv2D", "Dense") and layer.use_bias:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.uniform(-0.1, 0.1, bias.shape).astype(np.float32)])


if __name__ == "__main__":
    mode, cases_file, directory = sys.argv[1:4]
    chosen = [tuple(c) for c in json.loads(Path(cases_file).read_text())]
    {"torch": torch_side, "load": load_side}[mode](chosen, Path(directory))
