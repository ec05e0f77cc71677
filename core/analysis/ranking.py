"""A ranking's tables, and how far a score's order agrees with fine-tuned accuracy (Kendall's tau).

:class:`TextTable` is a header and rows of text, printed by rich or written as Markdown or CSV, so the
terminal, ``--format`` and the run's artifacts show one table. :func:`correlate` compares one score's values
with the test accuracies of the same candidates in a sweep: Kendall's tau-b with its two-sided p-value
(``scipy.stats.kendalltau``) and the weighted tau (``scipy.stats.weightedtau``: hyperbolic weights, the top
of either order counting most; scipy gives it without a p-value).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TextTable:
    title: str
    head: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # columns aligned right (numbers)

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.head) + " |",
                 "|" + "".join("---:|" if i in self.right else "---|" for i in range(len(self.head)))]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + ([""] + self.notes if self.notes else [])) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.head)
        writer.writerows(self.rows)
        return buf.getvalue()

    def rich(self):
        from rich.table import Table

        table = Table(title=self.title)
        for i, name in enumerate(self.head):
            table.add_column(name, justify="right" if i in self.right else "left")
        for row in self.rows:
            table.add_row(*row)
        return table


def number(value: float | None, spec: str = ".4g") -> str:
    """A score as the tables show it: '-' where it does not apply."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{spec}}"


def order(values: Sequence[float | None]) -> list[int]:
    """Positions sorted by value, highest first; missing values last; ties keep their given order."""
    return sorted(range(len(values)), key=lambda i: (values[i] is None, -(values[i] or 0.0)))


@dataclass(frozen=True)
class Correlation:
    """One score against the accuracies of ``n`` candidates (NaN where n < 2 or a side is constant)."""

    n: int
    tau: float
    p: float
    weighted_tau: float

    def as_dict(self) -> dict[str, float | int | None]:
        return {"n": self.n, **{k: (None if not math.isfinite(v) else v) for k, v in
                                (("tau", self.tau), ("p", self.p), ("weighted_tau", self.weighted_tau))}}


def correlate(scores: Sequence[float | None], accuracies: Sequence[float]) -> Correlation:
    """Kendall's tau and the weighted tau between ``scores`` and ``accuracies`` (pairs without a score left out)."""
    import numpy as np
    from scipy import stats

    pairs = [(s, a) for s, a in zip(scores, accuracies) if s is not None and math.isfinite(s) and math.isfinite(a)]
    nan = math.nan
    if len(pairs) < 2:
        return Correlation(len(pairs), nan, nan, nan)
    x = np.array([p[0] for p in pairs], dtype=np.float64)
    y = np.array([p[1] for p in pairs], dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(len(pairs), nan, nan, nan)
    kendall: Any = stats.kendalltau(x, y)  # scipy's result classes confuse the type checker
    result: Any = stats.weightedtau(x, y)
    return Correlation(len(pairs), float(kendall.statistic), float(kendall.pvalue), float(result.statistic))
