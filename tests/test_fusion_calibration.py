"""tle.studies.calibration: one factor per run, measured on validation images, that lets bagging keep both tasks."""

from __future__ import annotations

import numpy as np
import pytest

from tle.errors import UserError
from tle.studies.calibration import calibrate
from tle.studies.fusion import aligned_names
from tle.studies.vote import bagging_accuracy


def _runs(rng, classes: list[list[str]], scale: list[float], n: int, margin: float = 0.01):
    """Nets that read the same features (S2): on its own task a net's right class scores ``margin`` above the
    other nets' best, relative to a common level; net i's scores all ``scale[i]`` times larger."""
    names = aligned_names(classes, "index")
    k, runs = len(classes[0]), len(classes)
    labels = [rng.integers(0, k, n) for _ in range(runs)]
    logits = [[None] * runs for _ in range(runs)]
    for task in range(runs):
        base = 1.0 + 0.002 * rng.standard_normal((n, k))
        for net in range(runs):
            s = base + 0.002 * rng.standard_normal((n, k))
            if net == task:
                s[np.arange(n), labels[task]] += margin
            logits[net][task] = s * scale[net]
    truths = [[names[t][j] for j in labels[t]] for t in range(runs)]
    return logits, names, truths


def _pair(rng):
    """Digits and letters, B's scores 5 % larger."""
    return _runs(rng, [[str(k) for k in range(5)], [chr(97 + k) for k in range(5)]], [1.0, 1.05], n=200)


def test_a_factor_a_few_percent_off_hands_every_image_to_one_run_and_calibration_finds_the_scale():
    rng = np.random.default_rng(0)
    logits, names, truths = _pair(rng)
    raw = bagging_accuracy(logits, [1.0, 1.0], names, names[0], truths)
    assert raw[0] < 0.4 and raw[1] > 0.95, raw  # B's 5 % heavier scores answer A's images too
    cal = calibrate(logits, names, names[0], truths)
    assert cal.factors[0] == 1.0 and cal.factors[1] == pytest.approx(1 / 1.05, abs=0.006), cal.factors
    assert min(cal.bagging) > 0.9 and min(cal.shares) > 0.85, cal
    # Measured on one set of images, the factor holds on others drawn alike (the fusion's test split).
    logits, names, truths = _pair(np.random.default_rng(1))
    assert min(bagging_accuracy(logits, cal.factors, names, names[0], truths)) > 0.9


def test_three_runs_are_calibrated_one_after_another():
    rng = np.random.default_rng(2)
    classes = [[f"{t}{k}" for k in range(4)] for t in "xyz"]
    logits, names, truths = _runs(rng, classes, [1.0, 1.04, 0.97], n=150)
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
