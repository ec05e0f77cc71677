"""tle.study.calibration: one factor per run, measured on validation images, that lets bagging keep both tasks."""

from __future__ import annotations

import numpy as np
import pytest

from tle.errors import UserError
from tle.study.calibration import calibrate
from tle.study.fusion import aligned_names, bagging_scores, named_accuracy


def _pair(rng, n=200, classes=5, margin=0.01, heavier=1.05):
    """Two nets that read the same features (S2): on its own task a net's right class scores ``margin`` above
    the other net's best, relative to a common level; B's scores all ``heavier`` times larger."""
    names = aligned_names([[str(k) for k in range(classes)], [chr(97 + k) for k in range(classes)]], "index")
    labels = [rng.integers(0, classes, n) for _ in range(2)]
    logits = [[None, None], [None, None]]
    for task in range(2):
        base = 1.0 + 0.002 * rng.standard_normal((n, classes))
        for net in range(2):
            s = base + 0.002 * rng.standard_normal((n, classes))
            if net == task:
                s[np.arange(n), labels[task]] += margin
            logits[net][task] = s * (heavier if net == 1 else 1.0)
    truths = [[names[t][k] for k in labels[t]] for t in range(2)]
    return logits, names, truths


def _bagging(logits, names, truths, factors):
    classes = names[0]
    return [named_accuracy(bagging_scores([logits[i][t] * f for i, f in enumerate(factors)], names, classes),
                           classes, truths[t]) for t in range(2)]


def test_a_factor_a_few_percent_off_hands_every_image_to_one_run_and_calibration_finds_the_scale():
    rng = np.random.default_rng(0)
    logits, names, truths = _pair(rng)
    raw = _bagging(logits, names, truths, [1.0, 1.0])
    assert raw[0] < 0.4 and raw[1] > 0.95, raw  # B's 5 % heavier scores answer A's images too
    cal = calibrate(logits, names, names[0], truths)
    assert cal.factors[0] == 1.0 and cal.factors[1] == pytest.approx(1 / 1.05, abs=0.006), cal.factors
    assert min(cal.bagging) > 0.9 and min(cal.shares) > 0.85, cal
    # Measured on one set of images, the factor holds on others drawn alike (the fusion's test split).
    test = _pair(np.random.default_rng(1))
    assert min(_bagging(*test, cal.factors)) > 0.9


def test_three_runs_are_calibrated_one_after_another():
    rng = np.random.default_rng(2)
    n, classes = 150, 4
    names = aligned_names([[f"{t}{k}" for k in range(classes)] for t in "xyz"], "index")
    labels = [rng.integers(0, classes, n) for _ in range(3)]
    scale = [1.0, 1.04, 0.97]
    logits = [[None] * 3 for _ in range(3)]
    for task in range(3):
        base = 1.0 + 0.002 * rng.standard_normal((n, classes))
        for net in range(3):
            s = base + 0.002 * rng.standard_normal((n, classes))
            if net == task:
                s[np.arange(n), labels[task]] += 0.01
            logits[net][task] = s * scale[net]
    truths = [[names[t][k] for k in labels[t]] for t in range(3)]
    cal = calibrate(logits, names, names[0], truths)
    assert cal.factors[1] == pytest.approx(1 / 1.04, abs=0.006) and cal.factors[2] == pytest.approx(1 / 0.97, abs=0.006)
    assert min(cal.bagging) > 0.85, cal


def test_a_run_without_validation_images_is_a_user_error():
    rng = np.random.default_rng(3)
    logits, names, truths = _pair(rng)
    logits[0][1] = logits[0][1][:0]
    logits[1][1] = logits[1][1][:0]
    with pytest.raises(UserError, match="needs validation images") as err:
        calibrate(logits, names, names[0], [truths[0], []])
    assert "--normalise weights|none" in str(err.value) and "\n" not in str(err.value)
