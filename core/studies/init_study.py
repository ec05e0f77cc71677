"""S4's init study: how an initialiser shapes activations, measured in each backend's own framework.

Two questions, one command (``tle init-study``):

* **dense** (the book's experiment): inputs U[0, 1) of shape (N, 784) into one
  dense layer of 256 sigmoid neurons, bias zero, once per initialiser. With
  W ~ N(0, 1) almost every activation saturates near 0 or 1; Glorot keeps
  them around 0.5. Saturated means ``|a - 0.5| > 0.45`` for a sigmoid.
* **model**: a real backbone at initialisation on a batch of a dataset, every
  block's output summarised (mean, std, dead activations, dead channels).

The core draws the inputs and computes every statistic, so each backend is
measured on the same numbers with the same definitions; only the layer and
its initial weights come from the framework. Each backend runs in its own
worker process (:mod:`tle.studies.init_cells`): TensorFlow and torch must not
share one.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from tle.errors import UserError
from tle.contract.initializers import InitSpec
from tle.backends.manager import backend_entry_points, load_backend

DENSE_HOOK = "dense_activations"
BLOCK_HOOK = "block_activations"
DEFAULT_INITS = ("zeros", "normal:1", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform",
                 "lecun_normal", "lecun_uniform")
# The book's threshold for a sigmoid, i.e. within 5 % of either end of the output range.
SATURATION = 0.45
ACTIVATIONS = ("sigmoid", "tanh", "relu")
WORKER = "tle.studies.init_cells"


# -- what is measured ---------------------------------------------------------------


def saturated_mask(a: np.ndarray, activation: str) -> np.ndarray:
    """Where an activation sits in the flat part of its function (for ReLU: at zero, no gradient)."""
    if activation == "sigmoid":
        return np.abs(a - 0.5) > SATURATION
    if activation == "tanh":
        return np.abs(a) > 2 * SATURATION
    return a <= 0.0


def dense_summary(a: np.ndarray, activation: str) -> dict[str, float]:
    a = np.asarray(a, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()),
            "saturated_fraction": float(saturated_mask(a, activation).mean()),
            "min": float(a.min()), "max": float(a.max())}


class BlockAccumulator:
    """Statistics of one block's output over chunks of a batch, without keeping the chunks.

    Means and variances merge with Chan's pairwise formula (float64), so the
    result does not depend on the chunk size. A channel (last axis) is dead
    when it is zero for every position of every image.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.zeros = 0
        self.min = math.inf
        self.max = -math.inf
        self.active: np.ndarray | None = None
        self.shape: tuple[int, ...] = ()

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a)
        if a.size == 0:
            return
        flat = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)
        n = flat.size
        mean = float(flat.mean(dtype=np.float64))
        m2 = float(np.square(flat - mean, dtype=np.float64).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.zeros += int(np.count_nonzero(flat == 0))
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))
        active = (flat != 0).any(axis=0)
        self.active = active if self.active is None else self.active | active
        self.shape = tuple(int(d) for d in a.shape[1:])

    def summary(self) -> dict[str, float]:
        if not self.n:
            raise RuntimeError("no activations were recorded for this block")
        return {"mean": self.mean, "std": math.sqrt(max(self.m2 / self.n, 0.0)),
                "zero_fraction": self.zeros / self.n,
                "dead_units": float(1.0 - self.active.mean()) if self.active is not None else 0.0,
                "min": self.min, "max": self.max}


def study_inputs(samples: int, features: int, seed: int) -> np.ndarray:
    """U[0, 1) inputs, drawn once by the core so every backend sees the very same array."""
    return np.random.default_rng(seed).random((samples, features), dtype=np.float32)


def parse_inits(texts: list[str] | tuple[str, ...] | None) -> list[str]:
    """Canonical initialiser strings (``xavier_uniform`` -> ``glorot_uniform``), duplicates dropped."""
    names: list[str] = []
    for text in texts or DEFAULT_INITS:
        try:
            name = str(InitSpec.parse(text))
        except ValueError as exc:  # pydantic's ValidationError is one
            errors = getattr(exc, "errors", None)
            reason = errors()[0]["msg"].removeprefix("Value error, ") if errors else str(exc)
            raise UserError(f"--init {text!r}: {reason}",
                            "e.g. --init glorot_uniform --init normal:1 (see 'tle run --help')") from None
        if name not in names:
            names.append(name)
    return names


def metric_name(*parts: str) -> str:
    # MLflow allows letters, digits, _ - . / and spaces in metric names; "normal:1" becomes "normal_1".
    return ".".join(p.replace(":", "_") for p in parts)


# -- which backends ---------------------------------------------------------------------


def implements(backend, hook_name: str) -> bool:
    """Whether the backend's own module answers ``hook_name`` (not a plugin wrapping every backend)."""
    own = f"backend:{backend.name}"
    return any(impl.plugin_name == own for impl in getattr(backend.hook, hook_name).get_hookimpls())


def select_backends(names: list[str] | None, hook_name: str, model: str | None = None) -> list[str]:
    """The asked-for backends, checked; or every installed one that implements the hook (and has ``model``)."""
    if names:
        chosen = list(dict.fromkeys(names))
        for name in chosen:
            backend = load_backend(name)
            if not implements(backend, hook_name):
                raise UserError(f"backend {name!r} does not implement the {hook_name} hook that tle init-study needs",
                                "choose another --backend (see 'tle backends')")
            if model:
                backend.model(model)
        return chosen
    found = []
    for name in sorted(backend_entry_points()):
        try:
            backend = load_backend(name)
        except UserError:  # broken or not installed here: 'tle backends' says why
            continue
        info = backend.models().get(model) if model else None
        if implements(backend, hook_name) and (model is None or (info is not None and info.available)):
            found.append(name)
    if not found:
        what = f"has model {model!r} and implements {hook_name}" if model else f"implements {hook_name}"
        raise UserError(f"no installed backend {what}", "install one (pip install 'tle[torch]') or pass --backend")
    return found


# -- results ------------------------------------------------------------------------------


@dataclass
class BackendMeta:
    framework: str
    framework_version: str
    device: str = "cpu"
    seconds: float = 0.0


@dataclass
class DenseCell:
    backend: str
    init: str
    seed: int
    mean: float
    std: float
    saturated_fraction: float
    min: float
    max: float
    seconds: float
    activations: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "activations"}


@dataclass
class BlockCell:
    backend: str
    init: str
    seed: int
    block: str
    shape: list[int]
    mean: float
    std: float
    zero_fraction: float
    dead_units: float
    min: float
    max: float

    def row(self) -> dict:
        return asdict(self)


STATS = {"dense": ("saturated_fraction", "std", "mean"), "model": ("mean", "std", "zero_fraction", "dead_units")}


@dataclass
class StudyResult:
    mode: str  # "dense" or "model"
    config: dict
    inits: list[str]
    seeds: list[int]
    backends: dict[str, BackendMeta]
    cells: list  # one per backend, initialiser, seed (and block)
    run_id: str | None = None
    plot: Path | None = None

    def as_dict(self) -> dict:
        return {"mode": self.mode, "config": self.config, "inits": self.inits, "seeds": self.seeds,
                "backends": {k: asdict(v) for k, v in self.backends.items()},
                "summary": self.summary(), "results": [c.row() for c in self.cells], "run_id": self.run_id,
                "plot": str(self.plot) if self.plot else None}

    def cells_of(self, backend: str, init: str, block: str | None = None) -> list:
        return [c for c in self.cells
                if c.backend == backend and c.init == init and getattr(c, "block", None) == block]

    def blocks(self) -> list[str]:
        return list(dict.fromkeys(c.block for c in self.cells)) if self.mode == "model" else []

    def summary(self) -> list[dict]:
        """Mean and sample standard deviation over the seeds, per backend, initialiser (and block)."""
        rows = []
        for backend in self.backends:
            for init in self.inits:
                for block in self.blocks() or [None]:
                    cells = self.cells_of(backend, init, block)
                    if not cells:
                        continue
                    row = {"backend": backend, "init": init, "seeds": len(cells)}
                    if block is not None:
                        row.update(block=block, shape=cells[0].shape)
                    for stat in STATS[self.mode]:
                        values = np.array([getattr(c, stat) for c in cells], dtype=np.float64)
                        row[stat] = float(values.mean())
                        row[f"{stat}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                    rows.append(row)
        return rows


# -- running the backends, each in its own process ---------------------------------


class _Worker:
    """One backend's share of the study in a fresh Python process (``python -m tle.studies.init_cells``).

    The worker reads ``request.json`` in its folder, prints one ``done INIT``
    line per initialiser and writes ``result.json`` (plus ``.npy`` arrays).
    """

    def __init__(self, backend: str, request: dict, workdir: Path):
        self.backend = backend
        self.folder = workdir / backend
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "request.json").write_text(json.dumps({**request, "backend": backend}))
        self.stderr = open(self.folder / "stderr.txt", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", WORKER, str(self.folder)], stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    @property
    def stdout(self) -> IO[str]:
        assert self.proc.stdout is not None  # opened above (stdout=PIPE)
        return self.proc.stdout

    def result(self) -> dict:
        """Its result; its UserError comes back as ours (exit 2), anything else as a RuntimeError."""
        rc = self.proc.wait()
        self.stdout.close()
        self.stderr.seek(0)
        lines = [line.rstrip() for line in self.stderr.read().splitlines() if line.strip()]
        self.stderr.close()
        if rc == UserError.exit_code:
            raise UserError((lines[-1] if lines else f"backend {self.backend!r} refused the request")
                            .removeprefix("error: "))
        if rc != 0:
            raise RuntimeError(f"the {self.backend} worker of tle init-study failed: "
                               f"{lines[-1] if lines else f'exit code {rc}'}")
        return json.loads((self.folder / "result.json").read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()
        self.stderr.close()


def run_workers(backends: list[str], request: dict, workdir: Path, parallel: bool,
                on_progress: Callable[[str, str | None], None] | None = None) -> dict[str, dict]:
    """Every backend's result, from workers run together (``parallel``) or one after the other.

    ``on_progress(backend, None)`` announces a worker's start and
    ``on_progress(backend, INIT)`` each initialiser it finished. Together they
    overlap the frameworks' imports, which dominate a small study; one at a
    time keeps a large model's memory (a GPU's above all: TensorFlow takes it
    all) to one framework.
    """
    pending = list(backends)
    running: dict[str, _Worker] = {}
    results: dict[str, dict] = {}
    selector = selectors.DefaultSelector()
    try:
        while pending or running:
            while pending and (parallel or not running):
                name = pending.pop(0)
                if on_progress is not None:
                    on_progress(name, None)
                running[name] = _Worker(name, request, workdir)
                selector.register(running[name].stdout, selectors.EVENT_READ, name)
            for key, _ in selector.select():
                name = key.data
                line = running[name].stdout.readline()  # key.fileobj
                if line.startswith("done ") and on_progress is not None:
                    on_progress(name, line[5:].strip())
                elif not line:  # end of output: the worker is done
                    selector.unregister(key.fileobj)
                    results[name] = running.pop(name).result()
    finally:
        for worker in running.values():
            worker.kill()
        selector.close()
    return {name: results[name] for name in backends}


@dataclass(frozen=True)
class StudyRequest:
    """Which backends and initialisers, over which seeds; the workers' folder, and who hears of each initialiser
    done (``on_progress(backend, init)``; ``init`` None when a backend's worker starts)."""

    backends: list[str]
    inits: list[str]
    workdir: Path
    seeds: Sequence[int] = (0,)
    on_progress: Callable[[str, str | None], None] | None = None


@dataclass(frozen=True)
class DenseLayer:
    """S4's layer: ``samples`` inputs of ``features`` values in U[0, 1) through ``units`` units."""

    samples: int = 1000
    features: int = 784
    units: int = 256
    activation: str = "sigmoid"


@dataclass(frozen=True)
class ModelBatch:
    """A real model at initialisation, on a batch of ``batch`` images of ``dataset`` (the spec's dataset fields),
    ``chunk`` images at a time, on ``device``."""

    model: str
    dataset: dict
    batch: int = 32
    chunk: int = 8
    device: str = "auto"


def run_dense(study: StudyRequest, layer: DenseLayer = DenseLayer()) -> StudyResult:
    """S4: the same inputs through one dense layer per initialiser, in every backend."""
    backends, inits, workdir, on_progress = study.backends, study.inits, study.workdir, study.on_progress
    samples, features, units, activation = layer.samples, layer.features, layer.units, layer.activation
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r}", f"choose one of {', '.join(ACTIVATIONS)}")
    for name, value in (("samples", samples), ("features", features), ("units", units)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1, not {value}",
                            "e.g. --samples 1000 --features 784 --units 256")
    seeds = list(dict.fromkeys(int(s) for s in study.seeds))
    inputs = {}
    for seed in seeds:  # a seed draws the inputs and the weights
        inputs[str(seed)] = str(workdir / f"inputs_{seed}.npy")
        np.save(inputs[str(seed)], study_inputs(samples, features, seed))
    request = {"mode": "dense", "inits": inits, "seeds": seeds, "units": units, "activation": activation,
               "inputs": inputs}
    metas, cells = {}, []
    # A dense layer is small: the workers run together and their framework imports overlap.
    for backend, out in run_workers(backends, request, workdir, True, on_progress).items():
        metas[backend] = BackendMeta(**out["meta"])
        for item in out["cells"]:
            a = np.load(workdir / backend / item["array"])
            if a.shape != (samples, units):
                raise RuntimeError(f"backend {backend!r} returned activations of shape {a.shape} for "
                                   f"{item['init']}, expected {(samples, units)}")
            cells.append(DenseCell(backend, item["init"], item["seed"], **dense_summary(a, activation),
                                   seconds=item["seconds"], activations=a))
    config = {"samples": samples, "features": features, "units": units, "activation": activation, "bias": "zeros",
              "inputs": "U[0,1)", "saturation": SATURATION}
    return StudyResult("dense", config, inits, seeds, metas, cells)


def run_model(study: StudyRequest, at: ModelBatch) -> StudyResult:
    """A real model at initialisation: per-block statistics on one batch of the dataset, per initialiser."""
    backends, inits, workdir, on_progress = study.backends, study.inits, study.workdir, study.on_progress
    model, dataset, batch, chunk, device = at.model, at.dataset, at.batch, at.chunk, at.device
    if batch < 1:
        raise UserError(f"--batch must be at least 1, not {batch}", "e.g. --batch 32")
    seeds = list(dict.fromkeys(int(s) for s in study.seeds))
    request = {"mode": "model", "inits": inits, "seeds": seeds, "model": model, "dataset": dataset, "batch": batch,
               "chunk": chunk, "device": device}
    metas, cells = {}, []
    used = {}
    for backend, out in run_workers(backends, request, workdir, False, on_progress).items():
        metas[backend] = BackendMeta(**out["meta"])
        used[backend] = out["data"]
        cells += [BlockCell(backend, **item) for item in out["cells"]]
    config = {"model": model, "dataset": dataset, "batch": batch, "device": device,
              "data": next(iter(used.values()), {})}
    return StudyResult("model", config, inits, seeds, metas, cells)


# -- tracking ---------------------------------------------------------------------------


def _flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def metrics_of(result: StudyResult, backend: str | None = None) -> dict[str, float]:
    """Metrics of the parent run (every backend, ``...<init>.<backend>``) or of one backend's child run.

    Values are means over the seeds; with several seeds ``..._sd`` holds their standard deviation.
    """
    out = {}
    for row in result.summary():
        if backend is not None and row["backend"] != backend:
            continue
        tail = (row["init"],) if backend else (row["init"], row["backend"])
        for stat in STATS[result.mode]:
            if result.mode == "dense":
                key = (stat if stat == "saturated_fraction" else f"activation_{stat}",)
            else:
                key = (f"block_{stat}", row["block"])
            out[metric_name(*key, *tail)] = row[stat]
            if len(result.seeds) > 1:
                out[metric_name(key[0] + "_sd", *key[1:], *tail)] = row[f"{stat}_sd"]
    return out


def track(result: StudyResult, plot: Path, uri: str | None, experiment: str, run_name: str) -> str:
    """One parent run with every backend's metrics and the PNG; one child run per backend to compare in the UI."""
    from tle.store.tracking import configure, environment_tags, tracked_run

    mlflow = configure(uri, experiment)
    base = {"study": "init", "mode": result.mode, **environment_tags()}
    if result.mode == "model":
        base.update({"model": result.config["model"], "dataset": result.config["dataset"]["source"]})
    params = {**_flat_config(result.config), "inits": ",".join(result.inits), "backends": ",".join(result.backends),
              "seeds": ",".join(map(str, result.seeds))}
    with tracked_run(mlflow, name=run_name, tags={**base, "backends": ",".join(result.backends)}) as run:
        run.params(params)
        run.metrics(metrics_of(result))
        run.artifact(plot, "plots")
        run.json(result.as_dict(), "init_study.json")
        for backend, meta in result.backends.items():
            tags = {**base, "backend": backend, "framework": meta.framework,
                    "framework_version": meta.framework_version, "device": meta.device}
            with tracked_run(mlflow, name=f"{run_name}-{backend}", tags=tags, parent_id=run.run_id) as child:
                child.params(params)
                child.metrics({**metrics_of(result, backend), "worker_seconds": meta.seconds}, step=0)
        return run.run_id
