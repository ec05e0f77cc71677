"""Matplotlib PNGs logged as MLflow artifacts (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle.contract.loop import History

MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")  # what figure() imports (a ranking imports them early)


def figure(**kwargs):
    # A bare Figure on the Agg canvas: no pyplot state, nothing to close, and no tight_layout
    # (which renders every label twice): the margins below are fixed. Half of a sweep cell's
    # fixed cost was these two plots.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def learning_curves(history: History, path: Path, title: str) -> Path:
    steps = [r.step + 1 for r in history.records]
    fig = figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88, wspace=0.22)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(steps, history.series(f"{split}_{metric}"), style, label=split, markersize=3)
        # Stage boundaries (e.g. feature-extractor -> fine-tune) explain jumps in the curves.
        for prev, cur in zip(history.records, history.records[1:]):
            if cur.stage != prev.stage:
                ax.axvline(cur.step + 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def confusion_matrix(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    k = len(class_names)
    size = max(4.0, min(0.5 * k + 2, 20.0))
    fig = figure(figsize=(size, size))
    ax = fig.subplots()
    longest = max((len(str(n)) for n in class_names), default=1) if k <= 30 else 0
    margin = min(0.45, (0.6 + 0.09 * longest) / size)  # room for the rotated tick labels
    fig.subplots_adjust(left=margin, bottom=margin, right=0.97, top=0.92)
    ax.imshow(matrix, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        peak = matrix.max() if matrix.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                        color="white" if matrix[i, j] > peak / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100)
    return path


def curve_label(row: dict) -> str:
    """A run's legend entry in the compare curves: its strategy, or ``pretraining`` for a sweep's pretraining run
    (which trains from scratch on another task and must not read as a scratch cell)."""
    return "pretraining" if row.get("role") == "pretrain" else (row["strategy"] or "?")


def compare_curves(rows: list[dict], path: Path, title: str) -> Path:
    """val_acc per epoch, one line per run, one panel per backend; a colour per strategy across panels, the
    pretraining runs grey and dashed. The legend entries are also written into the PNG (text chunk ``Legend``)."""
    backends = sorted({r["backend"] or "?" for r in rows if r["val_curve"]}) or ["?"]
    labels = sorted({curve_label(r) for r in rows} - {"pretraining"})
    colours = {s: f"C{i % 10}" for i, s in enumerate(labels)} | {"pretraining": "0.45"}
    fig = figure(figsize=(5.2 * len(backends), 4))
    axes = fig.subplots(1, len(backends), squeeze=False, sharey=True)[0]
    fig.subplots_adjust(left=0.08 / len(backends) ** 0.5, right=0.98, bottom=0.13, top=0.86, wspace=0.08)
    legend = []
    for ax, backend in zip(axes, backends):
        seen: list[str] = []
        for r in rows:
            if (r["backend"] or "?") != backend or not r["val_curve"]:
                continue
            label = curve_label(r)
            ax.plot(range(1, len(r["val_curve"]) + 1), r["val_curve"], "--o" if label == "pretraining" else "-o",
                    markersize=2.5, linewidth=1.2, color=colours[label], alpha=0.75,
                    label=None if label in seen else label)
            if label not in seen:
                seen.append(label)
        ax.set_title(backend)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        legend.append(f"{backend}: {', '.join(seen)}")
    axes[0].set_ylabel("val_acc")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, metadata={"Title": title, "Legend": "; ".join(legend)})
    return path
