"""A candidate backbone's frozen features on a target dataset, for ``tle rank`` (:mod:`tle.studies.rank`).

Runs in a worker of the candidate's backend (``python -m tle.run.worker BACKEND``, task kind ``features``), so a
ranking of torch and Keras candidates never puts both frameworks in one process. The worker loads the target
data with the same split rules as ``tle run`` (:func:`tle.data.load_dataset`, split seed ``seed``), builds the
model on the candidate's weights (:mod:`tle.run.assembly`), and passes the training and validation images
through the frozen backbone in batches with the backend's ``block_activations`` hook, in inference mode. The
feature of an image is the last block's output averaged over its spatial positions (global average pooling;
a dense block's output as it is). Where the weights come from a stored run whose classes and input shape the
study passed on, the model is built with that run's classes and head, so the run's own head is kept and its
logits on the training images are written too (the input of NCE and LEEP).

``random`` weights are what a ``scratch`` run starts from: the model drawn from ``seed`` and every block redrawn
with the backend's default initialiser, as the runner does.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tle.backends.manager import load_backend
from tle.contract.initializers import InitSpec
from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.spec import DataSpec, HeadSpec
from tle.contract.strategy import HEAD
from tle.run.assembly import build, check_input
from tle.run.weights import resolve_weights
from tle.store.tracking import configure
from tle.workers.schedule import outcome_of

RANDOM = "random"
SPLITS = ("train", "val")


def handle_task(task: dict[str, Any], cache) -> dict[str, Any]:
    """The worker's side of a ``features`` task: the outcome names the files written under ``options["out"]``."""
    return outcome_of(lambda: extract(task["spec"]["backend"], task["options"], task["spec"]["tracking"].get("uri"),
                                      cache), {"cell": task["cell"]})


def pooled(block_output: np.ndarray) -> np.ndarray:
    """One row per image: a conv block's (N, H, W, C) output averaged over H and W, a dense block's as it is."""
    a = np.asarray(block_output, dtype=np.float32)
    if a.ndim == 4:
        return a.mean(axis=(1, 2))
    return a.reshape(len(a), -1)


def backbone_features(hook, model, last_block: str, images: np.ndarray, batch_size: int,
                      logits: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The pooled output of ``last_block`` for every image, ``batch_size`` images per call of the hook, and with
    ``logits`` the model's own head's logits from the same forward pass (None where the backend's hook does not
    give ``head``: the caller then runs :func:`evaluate`)."""
    asked = [last_block, HEAD] if logits else [last_block]
    parts, heads = [], []
    for start in range(0, len(images), batch_size):
        out = hook.block_activations(model=model, images=np.ascontiguousarray(images[start:start + batch_size]),
                                     blocks=asked)
        if not out or last_block not in out:
            raise RuntimeError(f"block_activations returned blocks {list(out or [])}, without {last_block!r}")
        parts.append(pooled(out[last_block]))
        heads.append(out.get(HEAD))
    if not parts:
        return np.zeros((0, 0), dtype=np.float32), None
    head = np.concatenate(heads) if logits and all(h is not None for h in heads) else None
    return np.concatenate(parts), head


def extract(backend_name: str, options: dict[str, Any], tracking_uri: str | None, load_data=None) -> dict[str, Any]:
    """Features (and the source head's logits) of one candidate, written as ``.npy`` files into ``options["out"]``.

    ``options``: ``index``, ``model``, ``weights`` (``random``, ``imagenet``, a path, ``runs:/ID``...; with
    ``weights_file`` and ``weights_classes``: the stored run's weights, already fetched, and its classes),
    ``dataset`` (a :class:`DataSpec` as JSON), ``seed``, ``batch_size``, ``device`` and ``source_head`` (None, or
    the stored run's ``class_names``, ``head`` spec and ``input_shape``: its head is used only on images of that
    shape).
    """
    from tle.data import load_dataset

    backend = load_backend(backend_name)
    info = backend.model(options["model"])
    seed, batch = int(options["seed"]), int(options["batch_size"])
    data = (load_data or load_dataset)(DataSpec.model_validate(options["dataset"]), seed=seed,
                                       extra_sources=backend.dataset_sources())
    check_input(info, data.input_shape)
    text, fetched = options["weights"], options.get("weights_file")
    if text.startswith(("runs:/", "models:/")) and not fetched:
        configure(tracking_uri)
    h, w, c = data.input_shape
    head = options.get("source_head")
    if head and head.get("input_shape") not in (None, f"{h}x{w}x{c}"):
        head = None  # the run's head was trained on other images: it may not fit these
    workdir = Path(tempfile.mkdtemp(prefix="tle-features-"))
    try:
        if text == RANDOM:
            weights = ResolvedWeights(kind="none")
        elif fetched:
            classes = options.get("weights_classes")
            weights = ResolvedWeights(kind="file", source=text, path=Path(fetched),
                                      class_names=tuple(classes) if classes else None)
        else:
            weights = resolve_weights(text, backend_name, workdir, model=info.name)
        names = tuple(head["class_names"]) if head else tuple(data.class_names)
        started = time.perf_counter()
        model = build(backend.hook, Blueprint(info.name, names, data.input_shape,
                                              HeadSpec.model_validate(head["head"]) if head else HeadSpec(),
                                              options.get("device", "auto"), "fp32", seed), weights)
        if text == RANDOM:
            backend.hook.apply_init(model=model, blocks=list(info.blocks),
                                    init=InitSpec.parse(backend.info.default_init), seed=seed)
        built = time.perf_counter() - started
        counts = backend.hook.count_parameters(model=model) or []
        out = Path(options["out"])
        out.mkdir(parents=True, exist_ok=True)
        index = int(options["index"])
        files: dict[str, str] = {}
        started = time.perf_counter()
        logits = None  # the source head's on the training images, from the features' own forward pass
        for split in SPLITS:
            x, y = data.split(split)
            features, split_logits = backbone_features(backend.hook, model, info.blocks[-1], x, batch,
                                                       logits=bool(head) and split == "train")
            if split == "train":
                logits = split_logits
            files[f"{split}_x"] = _save(out / f"c{index}_{split}_x.npy", features)
            files[f"{split}_y"] = _save(out / f"c{index}_{split}_y.npy", np.asarray(y, dtype=np.int64))
        seconds = time.perf_counter() - started
        if head:
            if logits is None:  # a backend whose block_activations does not give the head's logits
                logits = backend.hook.evaluate(model=model, images=data.x_train, labels=None, batch_size=batch).logits
            files["source_logits"] = _save(out / f"c{index}_source_logits.npy", np.asarray(logits, dtype=np.float32))
        return {"files": files, "fingerprint": data.fingerprint(), "params": int(sum(c.total for c in counts
                                                                                     if c.name != "head")),
                "block": info.blocks[-1], "source_head": bool(head), "input_shape": list(data.input_shape), "sizes": data.sizes(),
                "class_names": [str(c) for c in data.class_names], "build_seconds": built,
                "features_seconds": seconds, "source_seconds": time.perf_counter() - started - seconds,
                "device": backend.hook.resolve_device(device=options.get("device", "auto")) or "cpu"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _save(path: Path, array: np.ndarray) -> str:
    np.save(path, array)
    return str(path)
