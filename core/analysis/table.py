"""A sweep's result table, shaped like S1's: rows and columns chosen from the axes, seeds folded into cells.

Each table cell is one group (the cells that differ only in seed): the
metric's mean ± sd over seeds with n, and the mean wall time per run. Against
the group's ``scratch`` baseline (same axes, strategy scratch) a cell is
marked ▲/▼ when the difference is larger than the seed spread (see
:mod:`tle.analysis.stats`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from tle.analysis.axes import SEED_AXIS, short
from tle.analysis.stats import Summary, difference, group_key
from tle.store.status import RunStatus

FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class Group:
    axes: dict[str, Any]
    values: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    by_seed: dict[Any, float] = field(default_factory=dict)
    summary: Summary | None = None
    vs_scratch: Any = None  # stats.Difference
    wins: tuple[int, int] | None = None  # seeds where it beat the scratch cell of the same seed, seeds compared

    def record(self, metric: str) -> dict[str, Any]:
        s = self.summary or Summary.of([])
        rec = {**{short(k): v for k, v in self.axes.items()}, "n": s.n, f"{metric}_mean": _num(s.mean),
               f"{metric}_sd": _num(s.sd), "seconds_mean": _num(Summary.of(self.seconds).mean),
               "failed": sum(1 for st in self.statuses if st != RunStatus.FINISHED)}
        rec.update(against_scratch(self.vs_scratch, self.wins))
        rec["run_ids"] = self.run_ids
        return rec


def against_scratch(vs_scratch, wins: tuple[int, int] | None) -> dict[str, Any]:
    """A group's comparison with its scratch group, as record fields (none where there is no scratch group)."""
    rec: dict[str, Any] = {}
    if vs_scratch is not None:
        rec.update({"delta_vs_scratch": _num(vs_scratch.delta), "beyond_seed_spread": vs_scratch.beyond_spread,
                    "welch_p": _num(vs_scratch.p_value)})
    if wins is not None:
        rec.update({"seeds_better_than_scratch": wins[0], "seeds_compared": wins[1]})
    return rec


@dataclass
class SweepTable:
    title: str
    metric: str
    rows: list[str]
    cols: list[str]
    groups: dict[str, Group]
    notes: list[str] = field(default_factory=list)

    def grid(self) -> tuple[list[tuple], list[tuple], dict[tuple[tuple, tuple], Group]]:
        row_keys: list[tuple] = []
        col_keys: list[tuple] = []
        cells: dict[tuple[tuple, tuple], Group] = {}
        for g in self.groups.values():
            r = tuple(g.axes.get(k) for k in self.rows)
            c = tuple(g.axes.get(k) for k in self.cols)
            if r not in row_keys:
                row_keys.append(r)
            if c not in col_keys:
                col_keys.append(c)
            cells[(r, c)] = g
        return row_keys, col_keys, cells

    def text(self, g: Group | None, markup: bool = True) -> str:
        if g is None or g.summary is None or g.summary.n == 0:
            failed = g is not None and any(st != RunStatus.FINISHED for st in g.statuses)
            return ("[red]failed[/]" if markup else "failed") if failed else "-"
        s = g.summary
        mark = marks(g.vs_scratch, g.wins, markup)
        spread = f" ± {s.sd:.3f}" if s.n > 1 else ""
        secs = Summary.of(g.seconds).mean
        failed = sum(1 for st in g.statuses if st != RunStatus.FINISHED)
        tail = f" ({failed} failed)" if failed else ""
        return f"{s.mean:.3f}{spread} n={s.n}{mark} · {secs:.1f}s{tail}"

    def records(self) -> list[dict[str, Any]]:
        return [g.record(self.metric) for g in self.groups.values()]

    def markdown(self) -> str:
        row_keys, col_keys, cells = self.grid()
        head = [short(k) for k in self.rows] + [_col_title(self.cols, c) for c in col_keys]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in row_keys:
            lines.append("| " + " | ".join([str(v) for v in r] + [self.text(cells.get((r, c)), markup=False)
                                                                for c in col_keys]) + " |")
        return "\n".join(lines + [""] + self.notes) + "\n"

    def csv(self) -> str:
        recs = self.records()
        buf = io.StringIO()
        keys: list[str] = []
        for rec in recs:
            keys.extend(k for k in rec if k not in keys and k != "run_ids")
        writer = csv.DictWriter(buf, fieldnames=keys + ["run_ids"])
        writer.writeheader()
        for rec in recs:
            writer.writerow({**rec, "run_ids": " ".join(rec["run_ids"])})
        return buf.getvalue()

    def json(self) -> str:
        return json.dumps({"title": self.title, "metric": self.metric, "rows": self.rows, "cols": self.cols,
                           "rule": "beyond_seed_spread: |mean - scratch mean| > sd + scratch sd; welch_p: Welch's t-test",
                           "groups": self.records()}, default=str)

    def rich(self):
        from rich.table import Table

        row_keys, col_keys, cells = self.grid()
        table = Table(title=self.title, show_lines=len(row_keys) > 1)
        for k in self.rows:
            table.add_column(short(k))
        for c in col_keys:
            table.add_column(_col_title(self.cols, c), justify="right")
        for r in row_keys:
            table.add_row(*[str(v) for v in r], *[self.text(cells.get((r, c))) for c in col_keys])
        return table


def marks(diff, wins: tuple[int, int] | None = None, markup: bool = True) -> str:
    """The ▲/▼ rule: " ▲"/" ▼" when ``diff`` (a stats.Difference) exceeds the seed spread, then " k/n" seeds won."""
    mark = ""
    if diff is not None and diff.beyond_spread:
        mark = " ▲" if diff.delta > 0 else " ▼"
        if markup:
            mark = f"[{'green' if diff.delta > 0 else 'red'}]{mark}[/]"
    if wins is not None and wins[1] > 1:
        mark += f" {wins[0]}/{wins[1]}"
    return mark


def build_table(sweep, metric: str = "test_acc", rows: list[str] | None = None,
                cols: list[str] | None = None) -> SweepTable:
    """Group a finished sweep's cells by their axes (seed folded in) and lay them out."""
    rows, cols, missing = layout(sweep.grid, rows, cols)
    notes = []
    if missing:
        notes.append(f"rows also split by {', '.join(short(k) for k in missing)} (varying, not in --rows/--cols)")
    groups: dict[str, Group] = {}
    for res in sweep.cells:
        key = group_key(res.cell.axes)
        g = groups.setdefault(key, Group({k: v for k, v in res.cell.axes.items() if k != SEED_AXIS}))
        run = sweep.run_of(res)
        g.statuses.append(res.status)
        if run is not None:
            g.run_ids.append(run.run_id)
        if res.status == RunStatus.FINISHED and run is not None and metric in run.metrics:
            g.values.append(run.metrics[metric])
            g.by_seed[res.cell.spec.train.seed] = run.metrics[metric]
            if "wall_seconds" in run.metrics:
                g.seconds.append(run.metrics["wall_seconds"])
    for g in groups.values():
        g.summary = Summary.of(g.values)
    if "strategy" in sweep.grid.varying:
        for g in groups.values():
            if g.axes.get("strategy") == "scratch":
                continue
            base = groups.get(group_key({**g.axes, "strategy": "scratch"}))
            if base is not None and base.values and g.values:
                g.vs_scratch = difference(g.values, base.values)
                common = sorted(set(g.by_seed) & set(base.by_seed))
                g.wins = (sum(g.by_seed[k] > base.by_seed[k] for k in common), len(common))
        if any(g.vs_scratch is not None for g in groups.values()):
            notes.append("▲/▼: differs from scratch (same row otherwise) by more than the seed spread, "
                         "|Δ| > sd + sd_scratch; k/n: better than the scratch cell of the same seed on k of n "
                         "seeds; Welch's p in --format json/csv")
    seeds = sorted({len(g.statuses) for g in groups.values()})
    title = (f"sweep {sweep.grid.name}: {metric} mean ± sd over seeds (n), mean time per run"
             if max(seeds or [1]) > 1 else f"sweep {sweep.grid.name}: {metric}, time per run")
    return SweepTable(title, metric, rows, cols, groups, notes)


def _default_cols(varying: list[str]) -> list[str]:
    for key in ("dataset.source", "strategy"):
        if key in varying:
            return [key]
    return []


def layout(grid, rows: list[str] | None, cols: list[str] | None) -> tuple[list[str], list[str], list[str]]:
    """The table's row and column axes for ``grid`` (a UserError for a name that is not a varying axis),
    checked before a sweep runs. The third list holds the varying axes added to the rows unasked."""
    varying = [k for k in grid.varying if k != SEED_AXIS]
    cols = _resolve(cols, varying) if cols is not None else _default_cols(varying)
    rows = _resolve(rows, varying) if rows is not None else [k for k in varying if k not in cols]
    missing = [k for k in varying if k not in rows and k not in cols]
    return rows + missing, cols, missing  # never average over an axis the reader did not ask to fold


def _resolve(keys: list[str], varying: list[str]) -> list[str]:
    from tle.errors import UserError

    names = {short(k): k for k in varying} | {k: k for k in varying}
    out = []
    for k in keys:
        if k not in names:
            raise UserError(f"{k!r} is not an axis that varies in this sweep",
                            f"choose from {', '.join(short(v) for v in varying) or '(none)'}")
        out.append(names[k])
    return out


def _col_title(cols: list[str], values: tuple) -> str:
    return " / ".join(str(v) for v in values) if cols else "all"


def _num(value):
    if value is None:
        return None
    return None if isinstance(value, float) and not math.isfinite(value) else value
