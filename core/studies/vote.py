"""Bagging's vote over several runs' scores, and accuracy by class name: what the fusion scores and the
calibration (:mod:`tle.studies.calibration`) measures its factors with."""

from __future__ import annotations

import numpy as np


def bagging_scores(logits: list[np.ndarray], class_names: list[list[str]], classes: list[str]) -> np.ndarray:
    """Per class of ``classes``, the largest logit among the models that know it (-inf where none does)."""
    n = len(logits[0])
    out = np.full((n, len(classes)), -np.inf, dtype=np.float64)
    for scores, names in zip(logits, class_names):
        for j, name in enumerate(names):
            k = classes.index(str(name))
            out[:, k] = np.maximum(out[:, k], scores[:, j])
    return out


def bagging_accuracy(logits: list[list[np.ndarray]], factors: list[float], names: list[list[str]],
                     classes: list[str], truths: list[list[str]]) -> list[float]:
    """Per task t, bagging's accuracy on ``truths[t]`` when parent i's scores ``logits[i][t]`` are multiplied by
    ``factors[i]`` (a positive factor per parent: its own decisions stay as they were)."""
    return [named_accuracy(bagging_scores([lp[t] * f for lp, f in zip(logits, factors)], names, classes), classes,
                           truth) for t, truth in enumerate(truths)]


def named_accuracy(scores: np.ndarray, names: list[str], truth: list[str]) -> float:
    if not len(truth):
        return float("nan")
    predicted = np.asarray(names, dtype=object)[scores.argmax(axis=1)]
    return float(np.mean(predicted == np.asarray(truth, dtype=object)))
