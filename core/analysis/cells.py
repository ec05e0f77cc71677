"""``tle compare``'s cell view (the default for a sweep): one row per cell, seeds folded in.

A cell is the runs that differ only in their seed (and what follows from it: the split's fingerprint, the run's
name, the pretraining run it started from): backend × model × strategy × dataset, plus any other spec field that
varies between the runs compared. Each row shows mean ± sd over seeds of test accuracy and of each transfer
metric, with the sweep table's rule (:mod:`tle.analysis.stats`, :func:`tle.analysis.table.marks`): test accuracy is
marked ▲/▼ against the scratch cell of the same row when |Δ| > sd + sd_scratch, with k/n the seeds on which it beat
the scratch run of the same seed; a transfer metric is marked when its mean is further from no effect (jumpstart
and asymptote gain 0, speed-up and AUC ratio 1) than its sd.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from tle.analysis.compare import TRANSFER
from tle.analysis.axes import PRETRAIN, short
from tle.analysis.stats import Difference, Summary, difference
from tle.analysis.table import against_scratch, marks
from tle.store.status import RunStatus

# Params that differ between the seeds of one cell.
PER_SEED = ("train.seed", "tracking.", "train.checkpoint", "export.", "data.")
IDENTITY = ("backend", "model", "strategy", "dataset.source")
NEUTRAL = {"jumpstart": 0.0, "speedup": 1.0, "asymptote_gain": 0.0, "auc_ratio": 1.0}
TITLES = {"jumpstart": "jumpstart", "speedup": "speed-up", "asymptote_gain": "asym. gain", "auc_ratio": "AUC ratio"}
RULE = ("▲/▼ test acc: differs from the scratch cell of the same row by more than the seed spread "
        "(|Δ| > sd + sd_scratch), k/n: better than the scratch run of the same seed on k of n seeds; "
        "▲/▼ transfer metric: its mean is further than its sd from no effect (jumpstart, asym. gain 0; "
        "speed-up, AUC ratio 1); transfer metrics against the scratch run of the same seed")


@dataclass
class CellRow:
    role: str
    ident: dict[str, str]  # backend, model, strategy, dataset
    axes: dict[str, str]  # other spec fields that vary between the cells
    runs: list[dict] = field(default_factory=list)
    test: Summary = Summary(0, math.nan, math.nan)
    vs_scratch: Difference | None = None
    wins: tuple[int, int] | None = None
    transfer: dict[str, tuple[Summary, Difference | None]] = field(default_factory=dict)
    seconds: Summary = Summary(0, math.nan, math.nan)

    @property
    def failed(self) -> int:
        return sum(r["status"] != RunStatus.FINISHED for r in self.runs)

    def finished(self) -> list[dict]:
        return [r for r in self.runs if r["status"] == RunStatus.FINISHED]

    def by_seed(self) -> dict[str, float]:
        return {r["seed"]: r["test_acc"] for r in self.finished() if r["test_acc"] is not None}

    def strategy_text(self) -> str:
        return "pretraining" if self.role == PRETRAIN else self.ident["strategy"]

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"role": self.role, **self.ident, **self.axes, "n": self.test.n, "failed": self.failed,
                               "test_acc_mean": _num(self.test.mean), "test_acc_sd": _num(self.test.sd)}
        rec.update(against_scratch(self.vs_scratch, self.wins))
        for k, (s, diff) in self.transfer.items():
            rec.update({f"{k}_mean": _num(s.mean), f"{k}_sd": _num(s.sd), f"{k}_n": s.n,
                        f"{k}_beyond_sd": bool(diff is not None and diff.beyond_spread)})
        rec["seconds_mean"] = _num(self.seconds.mean)
        rec["run_ids"] = [r["run_id"] for r in self.runs]
        return rec


def _ident(row: dict) -> dict[str, str]:
    return {"backend": row["backend"], "model": row["model"], "strategy": row["strategy"], "dataset": row["dataset"]}


def _fields(row: dict) -> dict[str, str]:
    """The spec fields that make a run's cell, beside its identity (from params; a cell that failed before its run
    existed has only its ``axis.*`` tags)."""
    given = row.get("params") or row.get("axes") or {}
    fields = {k: v for k, v in given.items() if not k.startswith(PER_SEED) and k not in IDENTITY}
    if str(fields.get("weights", "")).startswith("runs:/"):
        fields["weights"] = "runs:/…"  # each seed's own pretraining run
    return fields


def cell_rows(rows: list[dict]) -> list[CellRow]:
    """Fold runs (``load_runs`` rows, oldest first) into cells, in the order their first run appears."""
    fields = [_fields(r) for r in rows]
    # A column for a field only where it splits runs of one backend, model, strategy and dataset: one that follows
    # from those (a backend's default initialiser, the weights of a strategy) would only widen the table.
    # A field some runs of a place lack varies too: a mapping set in one run and null in another (train.l2sp) is
    # "train.l2sp.alpha" in the first one's params and "train.l2sp" in the other's.
    seen: dict[tuple, list[dict[str, str]]] = {}
    for row, f in zip(rows, fields):
        if row.get("role") != PRETRAIN and row.get("params"):
            seen.setdefault(tuple(_ident(row).values()), []).append(f)
    varying = sorted({k for place in seen.values() for k in {k for f in place for k in f}
                      if len({f.get(k, "") for f in place}) > 1})
    cells: dict[tuple, CellRow] = {}
    for row, f in zip(rows, fields):
        axes = {short(k): f.get(k, "") for k in varying}
        key = (row.get("role", "run") == PRETRAIN, *_ident(row).values(), *axes.values())
        cell = cells.setdefault(key, CellRow(PRETRAIN if key[0] else "cell", _ident(row), axes))
        cell.runs.append(row)
    for cell in cells.values():
        done = cell.finished()
        cell.test = Summary.of([r["test_acc"] for r in done if r["test_acc"] is not None])
        cell.seconds = Summary.of([r["wall_seconds"] for r in done if r["wall_seconds"] is not None])
        if cell.role != PRETRAIN and cell.ident["strategy"] != "scratch":
            for k in TRANSFER:
                values = [r[k] for r in done if r.get(k) is not None and math.isfinite(r[k])]
                if values:
                    s = Summary.of(values)
                    cell.transfer[k] = (s, difference(values, [NEUTRAL[k]]))
    by_place = {(c.role, c.ident["backend"], c.ident["model"], c.ident["dataset"], *c.axes.values()): c
                for c in cells.values() if c.ident["strategy"] == "scratch"}
    for cell in cells.values():
        base = by_place.get((cell.role, cell.ident["backend"], cell.ident["model"], cell.ident["dataset"],
                             *cell.axes.values()))
        if base is None or base is cell or cell.role == PRETRAIN or not cell.test.n or not base.test.n:
            continue
        mine, theirs = cell.by_seed(), base.by_seed()
        cell.vs_scratch = difference(list(mine.values()), list(theirs.values()))
        common = sorted(set(mine) & set(theirs))
        cell.wins = (sum(mine[s] > theirs[s] for s in common), len(common))
    return list(cells.values())


# -- rendering ----------------------------------------------------------------


def _spread(s: Summary, spec: str, suffix: str = "") -> str:
    if s.n == 0:
        return "-"
    return f"{s.mean:{spec}}" + (f" ± {s.sd:{spec.lstrip('+')}}" if s.n > 1 else "") + suffix


def texts(cell: CellRow, markup: bool = True) -> list[str]:
    """The row's cells after its identity and axes: n, test acc, the transfer metrics (two decimals: they are
    noisier than the accuracy they come from)."""
    n = str(cell.test.n) + (f" ({cell.failed} failed)" if cell.failed else "")
    if markup and cell.failed:
        n = f"{cell.test.n} [red]({cell.failed} failed)[/]"
    acc = _spread(cell.test, ".3f") + marks(cell.vs_scratch, cell.wins, markup) if cell.test.n else "-"
    out = [n, acc]
    for k, spec, suffix in (("jumpstart", "+.2f", ""), ("speedup", ".2f", "x"), ("asymptote_gain", "+.2f", ""),
                            ("auc_ratio", ".2f", "")):
        if k not in cell.transfer:
            out.append("-")
            continue
        s, diff = cell.transfer[k]
        few = f" n={s.n}" if s.n < cell.test.n else ""  # a speed-up never reached is left out of its mean
        out.append(_spread(s, spec, suffix) + few + marks(diff, None, markup))
    return out


def heads(cells: list[CellRow]) -> tuple[list[str], list[str]]:
    axes = list(cells[0].axes) if cells else []
    return ["backend", "model", "strategy", "dataset", *axes], ["n", "test acc", *TITLES.values()]


def title(what: str, cells: list[CellRow]) -> str:
    return f"{what}: {len(cells)} cells, mean ± sd over seeds"


def rich_table(cells: list[CellRow], what: str):
    from rich import box
    from rich.table import Table

    left, right = heads(cells)
    table = Table(title=title(what, cells), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in left:
        table.add_column(col, no_wrap=True)
    for col in right:
        table.add_column(col, justify="right", no_wrap=True)
    for c in cells:
        table.add_row(*_left(c), *texts(c))
    return table


def _left(c: CellRow) -> list[str]:
    return [c.ident["backend"], c.ident["model"], c.strategy_text(), c.ident["dataset"], *c.axes.values()]


def markdown(cells: list[CellRow], what: str) -> str:
    left, right = heads(cells)
    head = left + right
    lines = [f"**{title(what, cells)}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_left(c) + texts(c, markup=False)) + " |" for c in cells]
    return "\n".join(lines + ["", RULE]) + "\n"


def records(cells: list[CellRow]) -> list[dict[str, Any]]:
    return [c.record() for c in cells]


def to_json(cells: list[CellRow], what: str) -> str:
    return json.dumps({"title": title(what, cells), "rule": RULE, "cells": records(cells)}, default=str)


def to_csv(cells: list[CellRow]) -> str:
    recs = records(cells)
    keys: list[str] = []
    for rec in recs:
        keys.extend(k for k in rec if k not in keys and k != "run_ids")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys + ["run_ids"])
    writer.writeheader()
    for rec in recs:
        writer.writerow({**rec, "run_ids": " ".join(rec["run_ids"])})
    return buf.getvalue()


def _num(value):
    if value is None:
        return None
    return None if isinstance(value, float) and not math.isfinite(value) else value
