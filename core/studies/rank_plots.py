"""A ranking's bar plot: one panel per score, a bar per candidate, in the order of the score the table is sorted by."""

from __future__ import annotations

from pathlib import Path

from tle.analysis.transferability import BASELINES, TITLES
from tle.run.plots import figure


def bar_plot(title: str, labels: list[str], values: dict[str, list[float | None]], by: str, path: Path) -> Path:
    """Horizontal bars of every score in ``values`` (one list per score, aligned with ``labels``, top first); a
    candidate without a value has no bar. Scores live on different scales: each panel has its own axis; ``by``'s
    panel is orange, the baselines' grey."""
    names = list(values)
    cols = 4
    rows = (len(names) + cols - 1) // cols
    fig = figure(figsize=(4.2 * cols, 0.9 + rows * (0.8 + 0.32 * len(labels))))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // cols][k % cols]
        ys = [i for i, v in enumerate(values[name]) if v is not None]
        color = "tab:orange" if name == by else ("tab:grey" if name in BASELINES else "tab:blue")
        ax.barh(ys, [values[name][i] for i in ys], color=color)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels if k % cols == 0 else [""] * len(labels), fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(TITLES.get(name, name) + (" (sorted by)" if name == by else ""), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for k in range(len(names), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.suptitle(title)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.16, right=0.99, top=1 - 0.45 / height, bottom=0.3 / height, wspace=0.15, hspace=0.55)
    fig.savefig(path, dpi=100)
    return path
