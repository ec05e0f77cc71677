"""A search's answer: per study the best trials, Optuna's parameter importances and plots, and with ``confirm`` the
best configurations re-run over seeds as mean ± sd with the sweep table's ▲/▼ rule against the baseline
(:mod:`tle.analysis.stats`, :class:`tle.analysis.table.SweepTable`); logged on the sweep's parent run."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tle.analysis.axes import PRETRAIN, SEED_AXIS
from tle.analysis.stats import Summary, difference, group_key
from tle.analysis.table import Group, SweepTable
from tle.store.status import PRUNED_TAG, RunStatus

SHOWN = 10  # trials shown per study in the terminal and markdown (all in --format json and csv)
RULE = ("▲/▼: differs from {against} by more than the seed spread (|Δ| > the sum of the two sd); k/n: better than "
        "{against} at the same seed on k of n seeds; Welch's p in --format json")


@dataclass
class TrialRow:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None
    epochs: int
    params: dict[str, Any]
    run_id: str | None
    note: str = ""  # re-run of an interrupted trial, why it failed

    def record(self) -> dict[str, Any]:
        return {"trial": self.number, "state": self.state, "value": _num(self.value), "epochs": self.epochs,
                **{f"param.{k}": v for k, v in self.params.items()}, "run_id": self.run_id, "note": self.note}


@dataclass
class StudyAnswer:
    name: str
    label: str
    axes: dict[str, Any]
    trials: list[TrialRow]
    importances: dict[str, float] = field(default_factory=dict)
    confirm: SweepTable | None = None
    against: str = ""
    plots: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> TrialRow | None:
        return next((t for t in self.trials if t.state == "COMPLETE" and t.value is not None), None)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


@dataclass
class SearchAnswer:
    """What ``tle sweep`` prints for a search (the grid's table's interface: rich, markdown, csv, json, notes) and
    logs on the parent; ``groups`` are the confirmed configurations (their means are logged as the grid's are)."""

    title: str
    metric: str  # the confirm table's (--metric)
    search_metric: str
    direction: str
    studies: list[StudyAnswer]
    notes: list[str] = field(default_factory=list)

    @property
    def groups(self) -> dict[str, Group]:
        return {f"{s.label}:{k}": g for s in self.studies if s.confirm is not None for k, g in s.confirm.groups.items()}

    def _head(self, s: StudyAnswer) -> str:
        counts = s.counts()
        best = s.best
        line = (f"study {s.label}: {len(s.trials)} trials ({counts.get('COMPLETE', 0)} complete, "
                f"{counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed)")
        if best is not None:
            line += (f"; best {self.search_metric} {best.value:.4f} (trial {best.number}: "
                     + ", ".join(f"{k}={short_value(v)}" for k, v in best.params.items()) + ")")
        return line

    def _importance(self, s: StudyAnswer) -> str:
        if not s.importances:
            return ""
        return (f"importance (Optuna's fANOVA over {s.counts().get('COMPLETE', 0)} complete trials): "
                + ", ".join(f"{k} {v:.2f}" for k, v in s.importances.items()))

    def _trial_rows(self, s: StudyAnswer) -> tuple[list[str], list[list[str]]]:
        params = list(s.trials[0].params) if s.trials else []
        head = ["trial", "state", self.search_metric, "epochs", *params, "run"]
        rows = [[str(t.number) + (f" ({t.note})" if t.note else ""), t.state.lower(),
                 "-" if t.value is None else f"{t.value:.4f}", str(t.epochs),
                 *[short_value(t.params.get(k, "-")) for k in params], (t.run_id or "")[:8]] for t in s.trials[:SHOWN]]
        return head, rows

    def rich(self):
        from rich.console import Group as Rendered
        from rich.table import Table

        parts: list[Any] = []
        for s in self.studies:
            head, rows = self._trial_rows(s)
            table = Table(title=self._head(s), title_justify="left")
            for col in head:
                table.add_column(col, justify="right" if col in (self.search_metric, "epochs") else "left")
            for row in rows:
                table.add_row(*row)
            parts.append(table)
            if len(s.trials) > SHOWN:
                parts.append(f"({len(s.trials) - SHOWN} more trials in --format json or csv)")
            if s.importances:
                parts.append(self._importance(s))
            if s.confirm is not None:
                parts.append(s.confirm.rich())
        return Rendered(*parts)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""]
        for s in self.studies:
            head, rows = self._trial_rows(s)
            lines += [f"*{self._head(s)}*", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines.append("")
            if s.importances:
                lines += [self._importance(s), ""]
            if s.confirm is not None:
                lines += [s.confirm.markdown()]
        return "\n".join(lines + self.notes) + "\n"

    def csv(self) -> str:
        recs = [{"study": s.label, **t.record()} for s in self.studies for t in s.trials]
        keys: list[str] = []
        for rec in recs:
            keys.extend(k for k in rec if k not in keys)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(recs)
        return buf.getvalue()

    def json(self) -> str:
        studies = []
        for s in self.studies:
            best = s.best
            studies.append({"study": s.name, "label": s.label, "axes": s.axes, "counts": s.counts(),
                            "best": best.record() if best else None, "importances": s.importances,
                            "against": s.against or None, "confirm": _confirm_records(s.confirm),
                            "trials": [t.record() for t in s.trials], "plots": [p.name for p in s.plots]})
        return json.dumps({"title": self.title, "metric": self.metric, "search_metric": self.search_metric,
                           "direction": self.direction, "studies": studies,
                           "rule": "beyond_seed_spread: |mean - baseline mean| > sd + baseline sd; welch_p: "
                                   "Welch's t-test"}, default=str)


def _confirm_records(table: SweepTable | None) -> list[dict[str, Any]]:
    if table is None:
        return []
    out = []
    for g in table.groups.values():
        s = g.summary or Summary.of([])
        rec = {**g.axes, "n": s.n, f"{table.metric}_mean": _num(s.mean), f"{table.metric}_sd": _num(s.sd),
               "by_seed": g.by_seed, "seconds_mean": _num(Summary.of(g.seconds).mean), "run_ids": g.run_ids}
        if g.vs_scratch is not None:
            rec.update({"delta_vs_baseline": _num(g.vs_scratch.delta), "beyond_seed_spread": g.vs_scratch.beyond_spread,
                        "welch_p": _num(g.vs_scratch.p_value)})
        if g.wins is not None:
            rec.update({"seeds_better_than_baseline": g.wins[0], "seeds_compared": g.wins[1]})
        out.append(rec)
    return out


def best_trials(study, top: int) -> list[Any]:
    """The ``top`` best completed trials of ``study`` (in its direction), one per configuration."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    done.sort(key=lambda t: (-t.value if study.direction == StudyDirection.MAXIMIZE else t.value, t.number))
    seen, out = set(), []
    for t in done:
        key = json.dumps(t.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out[:top]


def _trial_rows(study) -> list[TrialRow]:
    from optuna.study import StudyDirection

    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    rank = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.value is not None else (t.intermediate_values[t.last_step]
                                                    if t.last_step is not None else None)
        note = f"re-run of {t.user_attrs['tle.rerun_of']}" if "tle.rerun_of" in t.user_attrs else \
            ("interrupted" if t.user_attrs.get("tle.interrupted") else "")
        rows.append(TrialRow(t.number, t.state.name, value, len(t.intermediate_values), dict(t.params),
                             t.user_attrs.get("tle.run_id"), note))
    rows.sort(key=lambda r: (rank.get(r.state, 5), sign * r.value if r.value is not None and math.isfinite(r.value)
                             else math.inf, r.number))
    return rows


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (its default, fANOVA, seeded: the same trials give the same figures) over the
    completed trials; empty with fewer than two of them or when they do not tell the parameters apart."""
    import optuna
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
    return {k: float(v) for k, v in found.items()}


def _evaluator(found: dict[str, float]):
    """An Optuna importance evaluator that answers ``found`` (computed once by :func:`importances`): the importance
    plot shows the figures the table and the metrics show, without fitting fANOVA's forest again."""
    from optuna.importance import BaseImportanceEvaluator

    class Known(BaseImportanceEvaluator):
        def evaluate(self, study, params=None, *, target=None) -> dict[str, float]:
            return dict(found)

    return Known()


def answer(search, studies, confirmed: dict[int, list[tuple[str, Any]]], sweep, client, exp_id: str) -> SearchAnswer:
    """The answer of a search that ran (``search``: :class:`tle.studies.search.Search`; ``confirmed``: per study,
    its confirm and baseline cells by configuration)."""
    spec = search.search
    metric = search.metric
    by_index = {r.cell.index: r for r in sweep.results}
    out = []
    for st in studies:
        s = StudyAnswer(st.name, st.label, dict(st.cell.axes), _trial_rows(st.study), importances(st.study))
        if st.blocked:
            s.notes.append(f"study {st.label} ran no trial: {st.blocked}")
        if spec.confirm is not None and st.index in confirmed:
            s.against = spec.confirm.against
            s.confirm = _confirm_table(st, confirmed[st.index], by_index, sweep, metric, (client, exp_id))
        out.append(s)
    title = (f"search {search.grid.name}: {spec.sampler} sampler, {spec.pruner} pruner, {spec.direction} "
             f"{spec.metric}")
    notes = [n for s in out for n in s.notes]
    if spec.confirm is not None and spec.confirm.against != "none":
        notes.append(RULE.format(against=_against_name(spec.confirm.against)))
    return SearchAnswer(title, metric, spec.metric, spec.direction, out, notes)


def _against_name(against: str) -> str:
    return {"base": "the base spec", "scratch": "scratch"}.get(against, f"the best group of {against[6:]}")


def _confirm_table(st, cells: list[tuple[str, Any]], by_index, sweep, metric: str, where) -> SweepTable:
    """The confirmed configurations of study ``st`` and its baseline as groups over the confirm seeds, each marked
    against the baseline (the base spec, scratch, or the best group of a grid sweep)."""
    confirm = sweep.grid.search.confirm
    keys = list(sweep.grid.search.space)
    groups: dict[str, Group] = {}
    for config, cell in cells:
        g = groups.setdefault(config, Group({"config": config, **{k: short_value(_dotted(cell.spec, k)) for k in keys}}))
        res = by_index.get(cell.index)
        run = sweep.run_of(res) if res is not None else None
        g.statuses.append(res.status if res is not None else RunStatus.PENDING)
        if run is not None:
            g.run_ids.append(run.run_id)
        if res is not None and res.status == RunStatus.FINISHED and run is not None and metric in run.metrics:
            g.values.append(run.metrics[metric])
            g.by_seed[cell.spec.train.seed] = run.metrics[metric]
            if "wall_seconds" in run.metrics:
                g.seconds.append(run.metrics["wall_seconds"])
    if confirm.against.startswith("sweep:"):
        name = confirm.against[6:]
        best = _grid_best(name, st.cell.axes, metric, where)
        if best is not None:
            shown = " ".join(f"{k}={v}" for k, v in best.axes.items() if k not in keys)
            config = f"best of {name}" + (f" ({shown})" if shown else "")
            best.axes = {"config": config, **{k: best.axes.get(k, "-") for k in keys}}
            groups[config] = best
    for g in groups.values():
        g.summary = Summary.of(g.values)
    baseline = next((g for g in groups.values() if not str(g.axes["config"]).startswith("#")), None)
    if baseline is not None and baseline.values:
        for g in groups.values():
            if g is not baseline and g.values:
                g.vs_scratch = difference(g.values, baseline.values)
                common = sorted(set(g.by_seed) & set(baseline.by_seed))
                g.wins = (sum(g.by_seed[k] > baseline.by_seed[k] for k in common), len(common))
    title = f"confirm {st.label}: {metric} mean ± sd over seeds {', '.join(map(str, confirm.seeds))} (n), time per run"
    return SweepTable(title, metric, ["config", *keys], [], groups)


def _dotted(spec, key: str) -> Any:
    value: Any = spec
    for part in key.split("."):
        value = getattr(value, part, "-")
    return value


def _grid_best(name: str, axes: dict[str, Any], metric: str, where) -> Group | None:
    """The best group (mean of ``metric`` over its seeds) of the grid sweep ``name`` among those that agree with the
    study's ``axes`` on the axes they share."""
    from tle.analysis.compare import resolve_sweep

    client, exp_id = where
    parent = resolve_sweep(client, name, [exp_id])
    runs = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                                                        "attributes.status = 'FINISHED'", max_results=5000)
    groups: dict[str, Group] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get("tle.role") == PRETRAIN or PRUNED_TAG in tags or metric not in run.data.metrics:
            continue
        cell_axes = {k[5:]: v for k, v in tags.items() if k.startswith("axis.")}
        if any(str(axes[k]) != v for k, v in cell_axes.items() if k in axes):
            continue
        g = groups.setdefault(group_key(cell_axes), Group({k: v for k, v in cell_axes.items() if k != SEED_AXIS}))
        g.values.append(run.data.metrics[metric])
        g.run_ids.append(run.info.run_id)
        g.statuses.append(RunStatus.FINISHED)
        g.by_seed[int(run.data.params.get(SEED_AXIS, 0))] = run.data.metrics[metric]
        if "wall_seconds" in run.data.metrics:
            g.seconds.append(run.data.metrics["wall_seconds"])
    if not groups:
        return None
    return max(groups.values(), key=lambda g: Summary.of(g.values).mean)


def log_answer(sweep, table: SearchAnswer, studies) -> None:
    """The answer on the parent run: the tables (``results/``, as a grid's), the counts, each study's best value and
    importances as metrics, and Optuna's plots as PNGs (``plots/search/``)."""
    from tle.analysis.report import _metric_name, record
    from tle.store.tracking import configure

    client = configure(sweep.uri).MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        for st, s in zip(studies, table.studies):
            suffix = "" if len(studies) == 1 else f".{_slug(s.label)}"
            counts = s.counts()
            for state in ("COMPLETE", "PRUNED", "FAIL"):
                client.log_metric(sweep.parent_id, _metric_name(f"trials_{state.lower()}{suffix}"),
                                  float(counts.get(state, 0)))
            if s.best is not None and s.best.value is not None:
                client.log_metric(sweep.parent_id, _metric_name(f"best_trial_{table.search_metric}{suffix}"), s.best.value)
            for k, v in s.importances.items():
                client.log_metric(sweep.parent_id, _metric_name(f"importance.{k}{suffix}"), v)
            folder = Path(tmp) / "search" / _slug(s.label)
            s.plots = plots(st.study, s.importances, folder)
            if s.plots:
                client.log_artifacts(sweep.parent_id, str(folder), f"plots/search/{_slug(s.label)}")
    record(sweep, table)


def plots(study, importance: dict[str, float], folder: Path) -> list[Path]:
    """Optuna's matplotlib plots of ``study``: the optimisation history, the parameter importances, and a slice and a
    contour of the two most important parameters (each where the trials allow it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    top = list(importance)[:2] or list(complete[0].params)[:2]
    made = []
    todo = [("history", lambda: ov.plot_optimization_history(study)),
            ("slice", lambda: ov.plot_slice(study, params=top))]
    if importance:
        todo.append(("importances", lambda: ov.plot_param_importances(study, evaluator=_evaluator(importance))))
    if len(top) == 2 and len(complete) >= 2:
        todo.append(("contour", lambda: ov.plot_contour(study, params=top)))
    for name, draw in todo:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's matplotlib plots are "experimental"
            try:
                axes = draw()
            except (ValueError, RuntimeError, IndexError, KeyError, TypeError):  # too few trials for this plot
                continue
        figure = _figure_of(axes)
        if figure is None:
            continue
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        made.append(path)
    return made


def _figure_of(axes):
    import numpy as np

    first = np.asarray(axes, dtype=object).flat[0] if not hasattr(axes, "figure") else axes
    return getattr(first, "figure", None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "all"


def short_value(value: Any) -> str:
    """A sampled value as tables show it (3 significant digits)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _num(value):
    if value is None:
        return None
    return None if isinstance(value, float) and not math.isfinite(value) else value
