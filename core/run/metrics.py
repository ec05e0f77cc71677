"""Classification metrics from logits, computed once in core for every backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Report:
    accuracy: float
    loss: float
    confusion: np.ndarray
    per_class: dict[str, dict[str, float]]  # class -> precision/recall/f1/support
    macro_f1: float

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss, "macro_f1": self.macro_f1,
                "per_class": self.per_class, "confusion": self.confusion.tolist()}


def classification_report(labels: np.ndarray, logits: np.ndarray, loss: float, class_names: list[str]) -> Report:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    k = len(class_names)
    pred = logits.argmax(axis=1)
    ids = list(range(k))
    # sklearn has no stubs: the checker takes zero_division's type from its default ("warn"), the result for a float
    p, r, f, s = (np.asarray(v) for v in precision_recall_fscore_support(
        labels, pred, labels=ids, zero_division=0))  # pyright: ignore[reportArgumentType]
    per_class = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, name in enumerate(class_names)}
    return Report(
        accuracy=float((pred == labels).mean()) if len(labels) else float("nan"),
        loss=float(loss),
        confusion=confusion_matrix(labels, pred, labels=ids),
        per_class=per_class,
        macro_f1=float(np.mean(f)) if k else float("nan"),
    )
