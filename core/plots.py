"""Matplotlib PNGs logged as MLflow artifacts (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tle.loop import History


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: History, path: Path, title: str) -> Path:
    plt = _pyplot()
    steps = [r.step + 1 for r in history.records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(matrix: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    plt = _pyplot()
    k = len(class_names)
    size = max(4.0, min(0.5 * k + 2, 20.0))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        peak = matrix.max() if matrix.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                        color="white" if matrix[i, j] > peak / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
