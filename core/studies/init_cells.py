"""One backend's share of ``tle init-study``, run as ``python -m tle.studies.init_cells FOLDER``.

A process holds one framework only (TensorFlow and torch's exporter crash
one process together), so the study starts one of these per backend. It
reads ``FOLDER/request.json``, calls the backend's hooks and writes
``FOLDER/result.json``, plus one ``.npy`` per initialiser and seed in the
dense study. Stdout carries ``done INIT`` lines for the parent's progress
display; a UserError ends it with exit code 2 and the message as the last
line of stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from tle.errors import UserError
from tle.contract.initializers import InitSpec
from tle.backends.manager import Backend, load_backend
from tle.studies.init_study import BlockAccumulator


def _meta(backend: Backend, device: str, started: float) -> dict:
    return {"framework": backend.info.framework, "framework_version": backend.info.framework_version,
            "device": device, "seconds": time.perf_counter() - started}


def dense(backend: Backend, request: dict, folder: Path) -> dict:
    started = time.perf_counter()
    cells = []
    for init in request["inits"]:
        for seed in request["seeds"]:
            inputs = np.load(request["inputs"][str(seed)])
            t0 = time.perf_counter()
            a = backend.hook.dense_activations(inputs=inputs, units=int(request["units"]),
                                               activation=request["activation"], init=InitSpec.parse(init), seed=seed)
            if a is None:
                raise RuntimeError(f"backend {backend.name!r} returned nothing from dense_activations")
            cells.append({"init": init, "seed": seed, "seconds": time.perf_counter() - t0,
                          "array": f"dense_{len(cells)}.npy"})
            np.save(folder / cells[-1]["array"], np.asarray(a, dtype=np.float32))
        print(f"done {init}", flush=True)
    # The hook picks where a single layer runs (the framework's default device), not the study.
    return {"cells": cells, "meta": _meta(backend, "default", started)}


def model(backend: Backend, request: dict, folder: Path) -> dict:
    from tle.run.assembly import Blueprint, build, check_input
    from tle.data import load_dataset
    from tle.contract.spec import DataSpec, HeadSpec

    started = time.perf_counter()
    info = backend.model(request["model"])
    spec = DataSpec(**request["dataset"])
    seeds = [int(s) for s in request["seeds"]]
    # The images stay the same for every seed (the first one splits the data); the seeds vary the weights.
    data = load_dataset(spec, seed=seeds[0], extra_sources=backend.dataset_sources())
    h, w, c = data.input_shape
    check_input(info, data.input_shape)
    # Train images first, then the other splits, so a small dataset still fills the batch.
    pool = np.concatenate([data.x_train, data.x_val, data.x_test])
    images = np.ascontiguousarray(pool[: int(request["batch"])])
    hook = backend.hook
    device = hook.resolve_device(device=request["device"]) or "cpu"
    net = build(hook, Blueprint(info.name, tuple(data.class_names), (h, w, c), HeadSpec(),
                                request["device"], "fp32", seeds[0]))
    chunk = int(request["chunk"])
    cells = []
    for init in request["inits"]:
        for seed in seeds:
            # Every block is redrawn, as the scratch strategy does; the head is not part of the study.
            hook.apply_init(model=net, blocks=list(info.blocks), init=InitSpec.parse(init), seed=seed)
            acc = {b: BlockAccumulator() for b in info.blocks}
            for start in range(0, len(images), chunk):
                out = hook.block_activations(model=net, images=images[start:start + chunk], blocks=None)
                if out is None or list(out) != list(info.blocks):
                    raise RuntimeError(f"backend {backend.name!r} returned blocks {list(out or [])} from "
                                       f"block_activations; {info.name} has {list(info.blocks)}")
                for name, value in out.items():
                    acc[name].add(np.asarray(value))
            cells += [{"init": init, "seed": seed, "block": name, "shape": list(a.shape), **a.summary()}
                      for name, a in acc.items()]
        print(f"done {init}", flush=True)
    used = {"images": len(images), "input_shape": [h, w, c], "fingerprint": data.fingerprint()}
    return {"cells": cells, "data": used, "meta": _meta(backend, device, started)}


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    request = json.loads((folder / "request.json").read_text())
    try:
        backend = load_backend(request["backend"])
        result = {"dense": dense, "model": model}[request["mode"]](backend, request, folder)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return UserError.exit_code
    (folder / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
