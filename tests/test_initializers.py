import math

import pytest

from tle.contract.initializers import InitSpec


@pytest.mark.parametrize("text, name, param", [
    ("glorot_uniform", "glorot_uniform", None), ("xavier_normal", "glorot_normal", None),
    ("kaiming_normal", "he_normal", None), ("normal", "normal", 0.05), ("normal:0.02", "normal", 0.02),
    ("uniform:0.1", "uniform", 0.1),
])
def test_parse(text, name, param):
    spec = InitSpec.parse(text)
    assert spec.name == name and spec.param == param


def test_expected_std_formulas():
    assert InitSpec.parse("glorot_uniform").expected_std(300, 100) == pytest.approx(math.sqrt(2 / 400))
    assert InitSpec.parse("he_normal").expected_std(300, 100) == pytest.approx(math.sqrt(2 / 300))
    assert InitSpec.parse("lecun_normal").expected_std(300, 100) == pytest.approx(math.sqrt(1 / 300))
    assert InitSpec.parse("uniform:0.3").expected_std(1, 1) == pytest.approx(0.3 / math.sqrt(3))


@pytest.mark.parametrize("bad", ["orthogonal", "normal:abc", "normal:-1"])
def test_rejects(bad):
    with pytest.raises(ValueError):
        InitSpec.parse(bad)
