"""``tle rank``: candidate backbones scored on a target dataset from their frozen features, before any training.

A candidate is ``BACKEND:MODEL@WEIGHTS`` (:data:`SPELLING`): ``torch:vgg_small@runs:/ID``,
``keras:resnet_small@random``... ``random`` is what a ``scratch`` run starts from. The target data is loaded and
split as ``tle run`` does (same source, sizes, ``--max-per-class`` and split seed give the same split
fingerprint). Each candidate's features are extracted once, in batches, in a warm worker process of its backend
(:mod:`tle.run.features`, the backend's ``block_activations`` hook: torch, keras, spyketorch (conv2's spikes) and the
numpy example; a backend without the hook is refused in one line), then every score of
:mod:`tle.analysis.transferability` is computed here, timed. NCE and LEEP need the backbone's own source head:
they are computed for weights from a stored run (``runs:/``, ``models:/``) whose classes and input shape are
known, '-' otherwise. Beside them the two baselines: the backbone's parameter count and the source run's
test accuracy.

One MLflow run holds the ranking (tag ``tle.role = rank``): the candidates, the dataset and its split
fingerprint as params; ``c{i}.{score}`` and ``seconds.{score}`` metrics; the table (Markdown, CSV), a JSON of
everything and a bar plot as artifacts. It is created only after every feature was extracted and scored, so a
user error or a failure before leaves no run behind.

``--against SWEEP`` reads a finished ``tle sweep`` of the same store: its finished cells on the same dataset
whose backend, model and weights are a candidate's (``random`` matches ``weights: none``), their test accuracy
averaged over seeds per strategy, and Kendall's tau and the weighted tau of every score against it
(:func:`tle.analysis.ranking.correlate`), printed and logged as ``tau.{score}.{strategy}`` metrics.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from threadpoolctl import threadpool_limits  # scikit-learn's dependency

from tle.analysis import transferability as scores
from tle.analysis.ranking import Correlation, TextTable, correlate, number, order
from tle.analysis.stats import Summary
from tle.backends.manager import load_backend
from tle.contract.spec import DataSpec, TrackingSpec, build_spec, read_spec_file
from tle.errors import UserError
from tle.run.features import RANDOM
from tle.run.plots import MODULES as PLOT_MODULES
from tle.store.status import RunStatus
from tle.studies.init_study import BLOCK_HOOK, implements, metric_name
from tle.studies.rank_plots import bar_plot
from tle.workers.local import LocalPool
from tle.workers.schedule import Scheduler, Task

SPELLING = "BACKEND:MODEL@WEIGHTS, WEIGHTS one of random, imagenet, runs:/RUN_ID, models:/NAME/VERSION or a file"
EXAMPLE = "e.g. torch:vgg_small@runs:/RUN_ID,torch:resnet_small@random"
ALL = scores.SCORES + scores.BASELINES
ROLE = "rank"
FILE_KEYS = {"name", "base", "candidates", "axes", "by", "against"}
BASE_KEYS = {"dataset", "train", "tracking"}
AXIS_KEYS = ("backend", "model", "weights")


# -- what is ranked --------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    backend: str
    model: str
    weights: str  # random, imagenet, runs:/ID, models:/NAME/VERSION, a path
    name: str = ""  # shown instead of the spelling

    @property
    def spelling(self) -> str:
        return f"{self.backend}:{self.model}@{self.weights}"

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        weights = self.weights
        if weights.startswith("runs:/"):
            weights = "runs:/" + weights[len("runs:/"):][:8]
        return f"{self.backend}:{self.model}@{weights}"

    @property
    def cell_weights(self) -> str:
        """The ``weights`` a sweep cell of this candidate has."""
        return "none" if self.weights == RANDOM else self.weights

    def key(self) -> tuple[str, str, str]:
        return self.backend, self.model, self.cell_weights


def parse_candidate(text: str, name: str = "") -> Candidate:
    text = str(text).strip()
    backend, colon, rest = text.partition(":")
    model, at, weights = rest.partition("@")
    backend, model, weights = backend.strip(), model.strip(), weights.strip()
    if not (colon and at and backend and model and weights) or "," in text:
        raise UserError(f"candidate {text!r} is not {SPELLING}", EXAMPLE)
    return Candidate(backend, model, RANDOM if weights == "none" else weights, str(name or ""))


def parse_candidates(texts: list[str]) -> list[Candidate]:
    """``--candidates A,B --candidates C``: every comma-separated spelling, in order."""
    return [parse_candidate(t) for text in texts for t in str(text).split(",") if t.strip()]


@dataclass(frozen=True)
class RankSpec:
    """A ranking: the candidates, the target data (split as ``tle run`` splits it with ``seed``), the batch size and
    device of the extraction, where it is tracked, the score that orders the table and the sweep to check it by."""

    name: str
    candidates: tuple[Candidate, ...]
    dataset: DataSpec
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    by: str = "knn"
    against: str | None = None
    source: str = ""  # the rank file's text, logged with the run


@dataclass(frozen=True)
class RankRequest:
    """What the command line asks beside (or instead of) a rank file: ``overrides`` of dotted spec keys
    (``dataset.source``, ``train.seed``...) and, when given, the candidates, the score and the sweep."""

    candidates: tuple[Candidate, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    by: str | None = None
    against: str | None = None
    name: str | None = None


def check_by(by: str) -> str:
    if by not in ALL:
        raise UserError(f"unknown score {by!r}", f"--by one of {', '.join(ALL)}")
    return by


def rank_spec(request: RankRequest, path: Path | None = None) -> RankSpec:
    """The ranking of ``path`` (a rank file, see docs/concepts/ranking.md) with the command line's ``request`` on
    top, or of the command line alone; every field checked (one line per error)."""
    raw: dict[str, Any] = read_spec_file(path, given_by="tle rank FILE") if path is not None else {}
    unknown = sorted(set(raw) - FILE_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}", f"a rank file has {', '.join(sorted(FILE_KEYS))}")
    base = raw.get("base") or {}
    if not isinstance(base, dict) or set(base) - BASE_KEYS:
        raise UserError(f"{path}: 'base' takes {', '.join(sorted(BASE_KEYS))} only",
                        "the candidates name backend, model and weights; e.g. base: {dataset: digits:5-9}")
    if "dataset" not in base and request.overrides.get("dataset.source") is None:
        raise UserError("tle rank needs the target data", "give --dataset (e.g. --dataset digits:5-9) or "
                                                          "base: {dataset: ...} in the rank file")
    tree = copy.deepcopy(base)
    tree.update(backend="-", model="-")  # what the spec needs; each candidate names its own
    spec = build_spec(tree, request.overrides)
    candidates = list(request.candidates) or _file_candidates(raw, path)
    if not candidates:
        raise UserError("no candidates to rank", f"give --candidates ({EXAMPLE}) or a rank file with candidates")
    seen: set[str] = set()
    for c in candidates:
        if c.spelling in seen:
            raise UserError(f"candidate {c.spelling} is listed twice", "list each candidate once")
        seen.add(c.spelling)
    against = request.against or raw.get("against")
    by = check_by(str(request.by or raw.get("by") or "knn"))
    name = request.name or str(raw.get("name") or (path.stem if path else f"rank {spec.dataset.source}"))
    return RankSpec(name=name, candidates=tuple(candidates), dataset=spec.dataset, seed=spec.train.seed,
                    batch_size=spec.train.batch_size, device=spec.train.device, tracking=spec.tracking, by=by,
                    against=str(against) if against else None,
                    source=path.read_text(encoding="utf-8", errors="replace") if path else "")


def _file_candidates(raw: dict[str, Any], path: Path | None) -> list[Candidate]:
    found: list[Candidate] = []
    axes = raw.get("axes") or {}
    if not isinstance(axes, dict) or set(axes) - set(AXIS_KEYS) or (axes and set(axes) != set(AXIS_KEYS)):
        raise UserError(f"{path}: 'axes' must give backend, model and weights (lists)",
                        "e.g. axes: {backend: [torch, keras], model: [vgg_small], weights: [random]}")
    if axes:
        lists = [axes[k] if isinstance(axes[k], list) else [axes[k]] for k in AXIS_KEYS]
        found += [parse_candidate(f"{b}:{m}@{w}") for b, m, w in itertools.product(*lists)]
    listed = raw.get("candidates") or []
    if not isinstance(listed, list):
        raise UserError(f"{path}: 'candidates' must be a list", f"e.g. candidates: [{EXAMPLE.split(' ', 1)[1]}]")
    for item in listed:
        if isinstance(item, str):
            found.append(parse_candidate(item))
        elif isinstance(item, dict) and "candidate" in item and set(item) <= {"name", "candidate"}:
            found.append(parse_candidate(item["candidate"], item.get("name", "")))
        elif isinstance(item, dict) and set(item) <= {"name", *AXIS_KEYS} and set(AXIS_KEYS) <= set(item):
            found.append(parse_candidate(f"{item['backend']}:{item['model']}@{item['weights']}", item.get("name", "")))
        else:
            raise UserError(f"{path}: candidate {item!r} is neither {SPELLING.split(',')[0]} nor a mapping",
                            "write - torch:vgg_small@random, or - {name: NAME, candidate: torch:vgg_small@random}")
    return found


# -- checked before anything runs ------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A candidate's stored run: its head (for NCE and LEEP) and its test accuracy (the source_acc baseline)."""

    run_id: str
    backend: str | None
    class_names: tuple[str, ...] | None
    head: dict[str, Any] | None
    input_shape: str | None
    test_acc: float | None
    weights_file: str | None = None  # the run's weights, fetched (a run of the candidate's own backend)


def check_backend(candidate: Candidate) -> str:
    """One line for a candidate of an unknown backend or model, or of a backend that gives no features; the model's
    name."""
    backend = load_backend(candidate.backend)
    info = backend.model(candidate.model)
    if not implements(backend, BLOCK_HOOK):
        raise UserError(f"backend {candidate.backend!r} cannot be ranked: it gives no frozen features (no "
                        f"{BLOCK_HOOK} hook)", "rank candidates of a backend that implements it (torch, keras, spyketorch)")
    return info.name


def check_candidate(candidate: Candidate, folder: Path) -> Source | None:
    """:func:`check_backend`, then one line for weights that are not there; the stored run the weights come from,
    if any, with its weights fetched into ``folder`` when they are of the candidate's backend (MLflow is configured
    by the caller)."""
    model = check_backend(candidate)
    weights = candidate.weights
    if weights in (RANDOM, "imagenet"):
        return None
    if weights.startswith(("runs:/", "models:/")):
        return _source(candidate, model, folder)
    if not Path(weights).expanduser().exists():
        raise UserError(f"candidate {candidate.spelling}: weights file {weights!r} does not exist", SPELLING)
    return None


def _source(candidate: Candidate, model: str, folder: Path) -> Source:
    from tle.run.weights import registered_run_id
    from tle.store.stored_run import StoredRun, run_id_of

    weights = candidate.weights
    run_id = registered_run_id(weights) if weights.startswith("models:/") else run_id_of(weights)
    folder.mkdir(parents=True, exist_ok=True)
    with StoredRun(run_id, workdir=folder, doing="rank") as stored:
        stored.require(RunStatus.FINISHED, fix="rank the weights of a finished run")
        if stored.model and stored.model != model:
            raise UserError(f"candidate {candidate.spelling}: run {run_id} is a {stored.model}, not a {model}",
                            f"write {candidate.backend}:{stored.model}@{weights}")
        names = stored.class_names
        try:
            head = stored.spec().head.model_dump(mode="json")
        except UserError:
            head = None
        acc = stored.run.data.metrics.get("test_acc")
        # Fetched here, where MLflow is loaded already: the worker needs no store (a run of another backend is
        # converted there, by tle.run.weights).
        fetched = str(stored.weights()) if stored.backend == candidate.backend else None
        return Source(run_id, stored.backend, tuple(names) if names else None, head, stored.params.get("data.input_shape"),
                      float(acc) if acc is not None else None, fetched)


# -- the sweep a ranking is checked against ------------------------------------------------


@dataclass
class SweepTruth:
    """A finished sweep's test accuracy per strategy and candidate key, mean over its seeds."""

    name: str
    parent_id: str
    accuracy: dict[str, dict[tuple[str, str, str], Summary]]

    def strategies(self) -> list[str]:
        return list(self.accuracy)


def sweep_truth(name: str, dataset: str, candidates: tuple[Candidate, ...]) -> SweepTruth:
    """The sweep ``name`` of the configured store, read back; one line when it is not there or shares nothing."""
    import mlflow

    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    quoted = name.replace("'", "\\'")
    parents = client.search_runs(ids, filter_string=f"tags.`tle.sweep` = '{quoted}' and tags.`tle.role` = 'sweep'",
                                 order_by=["attributes.start_time DESC"], max_results=1) if ids else []
    if not parents:
        raise UserError(f"sweep {name!r} not found in {mlflow.get_tracking_uri()}",
                        "give the name of a tle sweep run in this store (--against NAME), or its --tracking-uri")
    parent = parents[0]
    cells = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                                             "tags.`tle.role` = 'cell' and attributes.status = 'FINISHED'",
                               max_results=5000)
    values: dict[str, dict[tuple[str, str, str], list[float]]] = {}
    for run in cells:
        tags = run.data.tags
        acc = run.data.metrics.get("test_acc")
        if tags.get("dataset") != dataset or acc is None:
            continue
        key = (tags.get("backend", ""), tags.get("model", ""), tags.get("weights", ""))
        values.setdefault(tags.get("strategy", "?"), {}).setdefault(key, []).append(float(acc))
    wanted = {c.key() for c in candidates}
    truth = {s: {k: Summary.of(v) for k, v in by_key.items() if k in wanted} for s, by_key in values.items()}
    truth = {s: t for s, t in truth.items() if t}
    if not truth:
        seen = sorted({f"{b}:{m}@{w}" for by_key in values.values() for b, m, w in by_key})
        raise UserError(f"sweep {name!r} has no finished cell on {dataset} of these candidates"
                        + (f" (its cells: {', '.join(seen[:6])}{' ...' if len(seen) > 6 else ''})" if seen else ""),
                        "rank the backbones the sweep fine-tuned, on its dataset (random matches weights: none)")
    return SweepTruth(name, parent.info.run_id, truth)


# -- the result ----------------------------------------------------------------------------


@dataclass
class CandidateResult:
    index: int
    candidate: Candidate
    values: dict[str, float | None] = field(default_factory=dict)  # every score and baseline (None: '-')
    seconds: dict[str, float] = field(default_factory=dict)  # per score
    features_seconds: float = 0.0  # the worker's build + extraction of this candidate
    feature_dim: int = 0
    device: str = "cpu"
    source_run: str | None = None


@dataclass
class Ranking:
    spec: RankSpec
    results: list[CandidateResult]
    fingerprint: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    run_id: str = ""
    uri: str = ""
    experiment: str = ""
    wall_seconds: float = 0.0
    extract_seconds: float = 0.0
    check_seconds: float = 0.0  # the checks before any worker ran a task (backends, the store, the sweep)
    log_seconds: float = 0.0  # the tracked run: params, metrics, tables, plot, artifacts
    truth: SweepTruth | None = None
    correlations: dict[str, dict[str, Correlation]] = field(default_factory=dict)  # strategy -> score -> tau

    def ordered(self, by: str | None = None) -> list[CandidateResult]:
        by = by or self.spec.by
        return [self.results[i] for i in order([r.values.get(by) for r in self.results])]

    def score_seconds(self) -> dict[str, float]:
        return {s: sum(r.seconds.get(s, 0.0) for r in self.results) for s in scores.SCORES}

    def table(self) -> TextTable:
        by = self.spec.by
        head = ["#", "candidate"] + [scores.TITLES[s] + (" ▼" if s == by else "") for s in ALL] + ["features s"]
        rows = []
        for place, r in enumerate(self.ordered(), 1):
            rows.append([str(place), r.candidate.label] + [_shown(s, r.values.get(s)) for s in ALL]
                        + [f"{r.features_seconds:.2f}"])
        seconds = self.score_seconds()
        rows.append(["", "seconds (all candidates)"] + [f"{seconds[s]:.3f}" if s in seconds else "" for s in ALL]
                    + [f"{self.extract_seconds:.1f}"])
        title = (f"{self.spec.name}: {len(self.results)} candidates on {self.spec.dataset.source} by {by} "
                 f"(train {self.sizes.get('train', 0)}, val {self.sizes.get('val', 0)} images, split "
                 f"{self.fingerprint[:12]})")
        notes = [f"k-NN: k={scores.KNN_K}, train -> val; LogME, H-score, GBC, NCE, LEEP on the train split; "
                 "'-': needs the source run's head (NCE, LEEP) or a stored run (source acc)"]
        return TextTable(title, head, rows, notes, right=set(range(2, len(head))) | {0})

    def against_table(self) -> TextTable | None:
        if self.truth is None:
            return None
        strategies = list(self.correlations)
        head = ["score"] + [f"{s} τ (p)" for s in strategies] + [f"{s} wτ" for s in strategies] + ["n"]
        rows = []
        for s in ALL:
            cs = [self.correlations[st][s] for st in strategies]
            rows.append([scores.TITLES[s]] + [f"{number(c.tau, '.2f')} ({number(c.p, '.2g')})" for c in cs]
                        + [number(c.weighted_tau, ".2f") for c in cs]
                        + ["/".join(str(c.n) for c in cs)])
        title = (f"Kendall's τ of each score against the test accuracy of sweep {self.truth.name!r} "
                 f"(mean over seeds; {', '.join(strategies)})")
        notes = ["τ: Kendall's tau-b with its two-sided p (scipy.stats.kendalltau); wτ: weighted tau "
                 "(scipy.stats.weightedtau, the top of either order weighs most); n: candidates in the sweep"]
        return TextTable(title, head, rows, notes, right=set(range(1, len(head))))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_id": self.run_id, "experiment": self.experiment, "tracking_uri": self.uri, "name": self.spec.name,
            "dataset": self.spec.dataset.source, "fingerprint": self.fingerprint, "sizes": self.sizes,
            "seed": self.spec.seed, "by": self.spec.by, "wall_seconds": self.wall_seconds,
            "check_seconds": self.check_seconds, "extract_seconds": self.extract_seconds,
            "score_seconds": self.score_seconds(), "log_seconds": self.log_seconds,
            "candidates": [{"rank": place, "index": r.index, "label": r.candidate.label,
                            "candidate": r.candidate.spelling, "backend": r.candidate.backend,
                            "model": r.candidate.model, "weights": r.candidate.weights, "source_run": r.source_run,
                            "feature_dim": r.feature_dim, "features_seconds": r.features_seconds, "device": r.device,
                            "scores": dict(r.values), "seconds": dict(r.seconds)}
                           for place, r in enumerate(self.ordered(), 1)],
        }
        if self.truth is not None:
            out["against"] = {"sweep": self.truth.name, "parent_run": self.truth.parent_id,
                              "accuracy": {st: {f"{b}:{m}@{w}": {"mean": s.mean, "sd": s.sd, "n": s.n}
                                                for (b, m, w), s in t.items()} for st, t in self.truth.accuracy.items()},
                              "correlations": {st: {s: c.as_dict() for s, c in cs.items()}
                                               for st, cs in self.correlations.items()}}
        return out


def _shown(name: str, value: float | None) -> str:
    if name == "params":
        return "-" if value is None else f"{int(value):,}"
    if name in ("knn", "source_acc"):
        return number(value, ".3f")
    return number(value, ".4g")


# -- running it ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RankOptions:
    tracking_uri: str | None = None
    jobs: int = 1
    console: Console | None = None
    quiet: bool = False


class Ranker:
    """Checks everything a user can get wrong at construction (before a run exists; the workers start once what
    needs no store was checked, and are stopped when a later check fails), then :meth:`run` extracts, scores,
    compares with the sweep and logs the one run."""

    def __init__(self, spec: RankSpec, options: RankOptions = RankOptions()):
        from tle.data.load import loader_for
        from tle.store.tracking import configure

        self.started = time.perf_counter()
        self.spec, self.options = spec, options
        self.console = options.console or Console(stderr=True)
        if options.jobs < 1:
            raise UserError(f"--jobs {options.jobs} must be at least 1", "use --jobs 1 or more")
        backends = list(dict.fromkeys(c.backend for c in spec.candidates))
        for c in spec.candidates:  # what needs no store first: backends, models, the hook, the data's source
            check_backend(c)
        for backend in backends:
            loader_for(spec.dataset, load_backend(backend).dataset_sources())  # the data itself loads in the workers
        # The workers start now and import their framework while the store is read.
        self.pool = LocalPool(options.jobs)
        # One per backend now (more at once would slow MLflow's import here on a small machine); the scheduler
        # starts the rest of --jobs when it hands out the first candidates.
        self.warm = [(self.pool.start(b), b) for b in backends[:options.jobs]]
        self.folder = Path(tempfile.mkdtemp(prefix="tle-rank-"))  # weights fetched, then the features
        try:
            mlflow = configure(options.tracking_uri or spec.tracking.uri)
            self.uri = mlflow.get_tracking_uri()
            # The scores' one slow import, then the bar plot's, while the workers extract (after MLflow's: two
            # imports in one process only take turns).
            scores.import_in_background(*PLOT_MODULES)
            self.sources = [check_candidate(c, self.folder / f"c{i}") for i, c in enumerate(spec.candidates)]
            self.truth = sweep_truth(spec.against, spec.dataset.source, spec.candidates) if spec.against else None
        except BaseException:
            self.close()
            raise
        self.fingerprint = ""  # of the split every worker made: checked to be one
        self.check_seconds = time.perf_counter() - self.started

    def close(self) -> None:
        """Stop the workers started for this ranking that are still idle (at once: they hold no run), and remove
        what was fetched and extracted."""
        for worker, _ in self.warm:
            if self.pool.alive(worker):
                worker.proc.kill()
            self.pool.stop(worker)
        self.warm = []
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(self) -> Ranking:
        from tle.progress import make_progress

        progress = make_progress(self.console, self.options.quiet)
        # Each candidate is scored in a thread as soon as its features arrive, while the workers extract the next
        # ones. One BLAS thread: the matrices are small, and two threads on a busy 2-core machine made an SVD 80x
        # slower.
        scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tle-scores")
        try:
            if progress is not None:
                progress.start()
            started = time.perf_counter()
            with threadpool_limits(limits=1):
                outcomes, scored = self._extract(self.folder / "features", progress, scoring)
                ranking = Ranking(self.spec, [], fingerprint=self.fingerprint, uri=self.uri,
                                  extract_seconds=time.perf_counter() - started, check_seconds=self.check_seconds)
                self._check_data(outcomes, ranking)
                ranking.results = [scored[i].result() for i in range(len(self.spec.candidates))]
        finally:
            scoring.shutdown(wait=True, cancel_futures=True)
            if progress is not None:
                progress.stop()
            self.close()
        if self.truth is not None:
            ranking.truth = self.truth
            ranking.correlations = correlations(ranking.results, self.truth)
        started = time.perf_counter()
        self._log(ranking)
        ranking.log_seconds = time.perf_counter() - started
        return ranking

    def _extract(self, folder: Path, progress, scoring: ThreadPoolExecutor
                 ) -> tuple[dict[int, dict[str, Any]], dict[int, Future[CandidateResult]]]:
        spec = self.spec
        tasks = []
        for i, (c, source) in enumerate(zip(spec.candidates, self.sources)):
            head = None
            if source is not None and source.class_names and source.head is not None:
                head = {"class_names": list(source.class_names), "head": source.head,
                        "input_shape": source.input_shape}
            options = {"index": i, "model": c.model, "weights": c.weights, "seed": spec.seed,
                       "dataset": spec.dataset.model_dump(mode="json"), "batch_size": spec.batch_size,
                       "device": spec.device, "out": str(folder), "source_head": head}
            if source is not None and source.weights_file is not None:
                options["weights_file"] = source.weights_file
                options["weights_classes"] = list(source.class_names) if source.class_names else None
            gpus = 1.0 if spec.device.startswith(("cuda", "gpu")) else 0.0
            tasks.append(Task(i, c.backend, {"backend": c.backend, "tracking": {"uri": self.uri}}, label=c.label,
                              gpus=gpus, kind="features", options=options))
        bar = progress.add_task("features", total=len(tasks), info="") if progress is not None else None
        score_bar = progress.add_task("scores", total=len(tasks), info="") if progress is not None else None
        outcomes: dict[int, dict[str, Any]] = {}
        scored: dict[int, Future[CandidateResult]] = {}

        def on_start(task: Task) -> None:
            if progress is not None and bar is not None:
                progress.update(bar, info=task.label)

        def score(i: int, outcome: dict[str, Any]) -> CandidateResult:
            result = self._score_one(i, outcome)
            if progress is not None and score_bar is not None:
                progress.advance(score_bar)
            return result

        def on_done(task: Task, outcome: dict[str, Any]) -> None:
            outcomes[task.cell] = outcome
            if outcome.get("status") == RunStatus.FINISHED:
                scored[task.cell] = scoring.submit(score, task.cell, outcome)
            if progress is not None and bar is not None:
                progress.advance(bar)

        scheduler = Scheduler(self.pool, self.options.jobs)
        for worker, backend in self.warm:  # started in __init__: the scheduler takes them as idle workers
            scheduler.idle.append((worker, backend))
            scheduler.owner[worker] = backend
        self.warm = []
        try:
            scheduler.run(tasks, on_start=on_start, on_done=on_done)
        finally:
            for worker, _ in scheduler.idle:  # idle workers hold no run: no need to wait for their interpreter's end
                worker.proc.kill()
            scheduler.close()
        for task in tasks:
            outcome = outcomes.get(task.cell, {})
            if outcome.get("status") != RunStatus.FINISHED:
                error = outcome.get("error", "no outcome")
                if outcome.get("user_error"):
                    raise UserError(f"candidate {task.label}: {error}")
                raise RuntimeError(f"candidate {task.label}: {error}")
        return outcomes, scored

    def _check_data(self, outcomes: dict[int, dict[str, Any]], ranking: Ranking) -> None:
        """Every worker split the same data (one fingerprint, the split ``tle run`` makes of it with this seed), with
        a validation split for k-NN and two classes in the training split."""
        first = outcomes[0]
        self.fingerprint = ranking.fingerprint = first["fingerprint"]
        for i, outcome in outcomes.items():
            if outcome["fingerprint"] != self.fingerprint:
                raise RuntimeError(f"candidate {self.spec.candidates[i].label} saw another split "
                                   f"({outcome['fingerprint']} != {self.fingerprint})")
        ranking.sizes = dict(first["sizes"])
        fix = "raise --max-per-class or give dataset.train/val as counts per class (e.g. --set dataset.val=5)"
        if ranking.sizes.get("val", 0) == 0:
            raise UserError(f"the validation split of {self.spec.dataset.source} is empty: k-NN accuracy is measured "
                            "on it", fix)
        labels = np.load(first["files"]["train_y"])
        if len(np.unique(labels)) < 2 or len(labels) < 3:
            raise UserError(f"the training split of {self.spec.dataset.source} holds {len(labels)} image(s) of "
                            f"{len(np.unique(labels))} class(es); scores need two classes", fix)

    def _score_one(self, i: int, outcome: dict[str, Any]) -> CandidateResult:
        c, source = self.spec.candidates[i], self.sources[i]
        files = {k: np.load(v) for k, v in outcome["files"].items()}
        data = scores.ScoreInput(files["train_x"], files["train_y"], files["val_x"], files["val_y"],
                                 files.get("source_logits"))
        took = sum(float(outcome.get(k, 0.0)) for k in ("build_seconds", "features_seconds", "source_seconds"))
        result = CandidateResult(i, c, features_seconds=took, feature_dim=int(files["train_x"].shape[1]),
                                 device=str(outcome.get("device", "cpu")), source_run=source.run_id if source else None)
        for name in scores.SCORES:
            t0 = time.perf_counter()
            value = scores.score(name, data)
            result.seconds[name] = time.perf_counter() - t0
            result.values[name] = None if value is None or not math.isfinite(value) else float(value)
        result.values["params"] = float(outcome["params"])
        result.values["source_acc"] = source.test_acc if source else None
        return result

    def _log(self, ranking: Ranking) -> None:
        from tle.store.tracking import configure, environment_tags, tracked_run

        spec = self.spec
        mlflow = configure(self.uri, spec.tracking.experiment)
        tags = {"tle.role": ROLE, "tle.rank": spec.name, "dataset": spec.dataset.source, "tle.by": spec.by,
                **environment_tags()}
        if self.truth is not None:
            tags.update({"tle.against": self.truth.name, "tle.against_run": self.truth.parent_id})
        folder = Path(tempfile.mkdtemp(prefix="tle-rank-run-"))
        try:
            with tracked_run(mlflow, name=spec.tracking.run_name or f"rank: {spec.name}", tags=tags) as run:
                ranking.run_id, ranking.experiment = run.run_id, spec.tracking.experiment
                run.params({"dataset": spec.dataset.source, "data.fingerprint": self.fingerprint, "seed": spec.seed,
                            "by": spec.by, "batch_size": spec.batch_size, "against": spec.against or "",
                            "candidates": json.dumps([c.spelling for c in spec.candidates])[:6000],
                            **{f"dataset.{k}": str(v) for k, v in spec.dataset.model_dump(mode="json").items()},
                            **{f"data.{k}_size": v for k, v in ranking.sizes.items()},
                            **{f"candidate.c{i}": c.spelling for i, c in enumerate(spec.candidates)}})
                metrics: dict[str, float] = {}
                for r in ranking.results:
                    metrics.update({f"c{r.index}.{k}": v for k, v in r.values.items() if v is not None})
                    metrics[f"c{r.index}.features_seconds"] = r.features_seconds
                metrics.update({f"seconds.{k}": v for k, v in ranking.score_seconds().items()})
                metrics["seconds.extract"] = ranking.extract_seconds
                for strategy, cs in ranking.correlations.items():
                    for s, c in cs.items():
                        for key, value in (("tau", c.tau), ("tau_p", c.p), ("wtau", c.weighted_tau),
                                           ("tau_n", float(c.n))):
                            if math.isfinite(value):
                                metrics[metric_name(key, s, strategy)] = value
                run.metrics(metrics)
                if spec.source:
                    run.text(spec.source, "rank.yaml")
                table = ranking.table()
                (folder / "ranking.md").write_text(table.markdown())
                (folder / "ranking.csv").write_text(table.csv())
                against = ranking.against_table()
                if against is not None:
                    (folder / "against.md").write_text(against.markdown())
                    (folder / "against.csv").write_text(against.csv())
                ordered = ranking.ordered()
                bar_plot(f"{spec.name}: {spec.dataset.source}, sorted by {scores.TITLES[spec.by]}",
                         [r.candidate.label for r in ordered], {s: [r.values.get(s) for r in ordered] for s in ALL},
                         spec.by, folder / "ranking.png")
                ranking.wall_seconds = time.perf_counter() - self.started
                run.metrics({"wall_seconds": ranking.wall_seconds})
                (folder / "ranking.json").write_text(json.dumps(ranking.as_dict(), indent=2))
                run.artifact(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def correlations(results: list[CandidateResult], truth: SweepTruth) -> dict[str, dict[str, Correlation]]:
    """Per strategy of the sweep, per score: tau between the candidates' scores and their mean test accuracy."""
    out: dict[str, dict[str, Correlation]] = {}
    for strategy, accuracy in truth.accuracy.items():
        matched = [r for r in results if r.candidate.key() in accuracy]
        acc = [accuracy[r.candidate.key()].mean for r in matched]
        out[strategy] = {s: correlate([r.values.get(s) for r in matched], acc) for s in ALL}
    return out

