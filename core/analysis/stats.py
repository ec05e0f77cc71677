"""Statistics over seeds: mean, spread, and whether a difference is larger than the spread.

A group is the cells that differ only in ``train.seed``. Each group reports
mean ± sample standard deviation over its n seeds. A difference against the
group's ``scratch`` baseline counts as larger than the seed spread when the
two mean ± sd intervals do not overlap (|Δ| > sd_a + sd_b), a deliberately
plain rule a reader can check by eye; Welch's t-test p-value is reported
beside it for readers who want a test (it needs n ≥ 2 in both groups).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tle.analysis.axes import SEED_AXIS


def group_key(axes: dict[str, Any], drop: tuple[str, ...] = (SEED_AXIS,)) -> str:
    return json.dumps({k: v for k, v in axes.items() if k not in drop}, sort_keys=True, default=str)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    sd: float  # sample standard deviation (ddof 1); 0 for one seed

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        vals = [v for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return cls(0, math.nan, math.nan)
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return cls(len(vals), mean, sd)


@dataclass(frozen=True)
class Difference:
    delta: float
    beyond_spread: bool  # |delta| > sd_a + sd_b: the mean ± sd bars do not overlap
    p_value: float | None  # Welch's t-test, two-sided; None with fewer than 2 seeds on a side


def difference(a: list[float], b: list[float]) -> Difference:
    """``a`` against the baseline ``b``."""
    sa, sb = Summary.of(a), Summary.of(b)
    delta = sa.mean - sb.mean
    beyond = sa.n > 0 and sb.n > 0 and abs(delta) > sa.sd + sb.sd
    p = None
    if sa.n >= 2 and sb.n >= 2:
        p = welch_p(a, b)
    return Difference(delta, bool(beyond), p)


def welch_p(a: list[float], b: list[float]) -> float | None:
    from scipy import stats

    if len(set(a)) == 1 and len(set(b)) == 1:
        return 0.0 if a[0] != b[0] else 1.0
    result = stats.ttest_ind(a, b, equal_var=False)
    # scipy's stubs leave TtestResult's fields out (it is a tuple bunch): the checker is wrong here
    p = float(result.pvalue)  # pyright: ignore[reportAttributeAccessIssue]
    return p if math.isfinite(p) else None
