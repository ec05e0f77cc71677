import math

import pytest

from tle.analysis.transfer import epochs_to, transfer_metrics


def test_s0_like_curves():
    # S0: the pretrained model reaches 0.9 after 3 epochs, the scratch one needs many more.
    scratch = [0.3, 0.45, 0.55, 0.62, 0.68, 0.72, 0.75]
    pretrained = [0.8, 0.88, 0.91, 0.95, 0.97, 0.98, 0.985]
    m = transfer_metrics(pretrained, scratch)
    assert m.jumpstart == pytest.approx(0.5)
    assert m.asymptote_gain == pytest.approx(0.985 - 0.75)
    assert m.threshold == pytest.approx(0.9 * 0.985)
    assert m.epochs_to_threshold == 3 and math.isinf(m.base_epochs_to_threshold)
    assert m.speedup == math.inf
    assert m.auc_ratio > 1.4


def test_speedup_when_both_reach_threshold():
    base = [0.1, 0.5, 0.8, 0.9, 1.0]
    run = [0.5, 0.95, 1.0, 1.0, 1.0]
    m = transfer_metrics(run, base)
    assert (m.epochs_to_threshold, m.base_epochs_to_threshold, m.speedup) == (2, 4, 2.0)


def test_negative_transfer_is_negative():
    m = transfer_metrics([0.1, 0.2], [0.5, 0.9])
    assert m.jumpstart < 0 and m.asymptote_gain < 0 and m.auc_ratio < 1 and m.speedup == 0.0


def test_epochs_to():
    assert epochs_to([0.1, 0.5, 0.9], 0.5) == 2 and math.isinf(epochs_to([0.1], 0.5))
