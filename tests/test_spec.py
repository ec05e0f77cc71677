"""The experiment spec: YAML/TOML loading, CLI overrides, validation messages."""

import pytest

from tle.errors import UserError
from tle.contract.initializers import InitSpec
from tle.contract.spec import ExperimentSpec, build_spec, read_spec_file


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("backend: numpy\nmodel: mlp\ndataset: digits:0-4\ntrain:\n  epochs: 7\n  lr: 0.01\n")
    spec = build_spec(read_spec_file(f), {"train.epochs": 3, "dataset.image_size": 16, "model": None})
    assert spec.train.epochs == 3 and spec.train.lr == 0.01
    assert spec.dataset.source == "digits:0-4" and spec.dataset.image_size == 16
    assert spec.model == "mlp"


def test_toml(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('backend = "numpy"\nmodel = "mlp"\nstrategy = "freeze"\n[train]\nepochs = 2\n')
    spec = build_spec(read_spec_file(f))
    assert spec.strategy == "feature-extractor" and spec.train.epochs == 2


def test_defaults_follow_the_seeds():
    spec = ExperimentSpec(backend="b", model="m")
    assert spec.init is None  # the backend decides: glorot_uniform (S0's "normalised initialisation") for CNNs
    assert spec.with_defaults("glorot_uniform").init.name == "glorot_uniform"
    assert str(spec.with_defaults("normal:0.05").init) == "normal:0.05"
    named = spec.model_copy(update={"init": InitSpec.parse("he_normal")})
    assert named.with_defaults("normal:0.05").init.name == "he_normal"  # a named initialiser always wins
    assert (spec.train.finetune_lr, spec.train.finetune_epochs) == (1e-5, 2)  # S3
    assert (spec.head.kind, spec.head.hidden, spec.head.dropout) == ("dense", 256, 0.5)  # S0's head


def test_round_trip_yaml(tmp_path):
    spec = build_spec({"backend": "numpy", "model": "mlp", "init": "normal:0.02", "strategy": "finetune:block2"})
    f = tmp_path / "saved.yaml"
    f.write_text(spec.to_yaml())
    assert build_spec(read_spec_file(f)) == spec
    assert str(spec.init) == "normal:0.02" and spec.init.param == 0.02


def test_flat_params():
    flat = build_spec({"backend": "numpy", "model": "mlp"}).with_defaults("glorot_uniform").flat()
    assert flat["train.epochs"] == "5" and flat["dataset.source"] == "digits" and flat["init.name"] == "glorot_uniform"
    assert flat["head.init"] == "None"  # the backend's default for the head kind (HeadSpec.initializer)


@pytest.mark.parametrize("tree, words", [
    ({"backend": "x", "model": "m", "train": {"epochs": 0}}, ["train.epochs", "greater than or equal to 1"]),
    ({"backend": "x", "model": "m", "train": {"optimizer": "rmsprop"}}, ["train.optimizer", "'adam'", "'sgd'"]),
    ({"backend": "x", "model": "m", "strategy": "finetune"}, ["strategy", "finetune:block5"]),
    ({"backend": "x", "model": "m", "init": "bogus"}, ["init", "glorot_uniform", "he_normal"]),
    ({"backend": "x", "model": "m", "trian": {}}, ["trian", "unknown field"]),
    ({"backend": "x", "model": "m", "dataset": {"val": 1.5}}, ["dataset.val", "fraction"]),
    ({"backend": "x", "model": "m", "train": {"device": "tpu"}}, ["train.device", "cuda:N"]),
    ({"model": "m"}, ["backend", "required"]),
])
def test_invalid_values_name_field_and_allowed(tree, words):
    with pytest.raises(UserError) as info:
        build_spec(tree)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_yaml_is_one_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("backend: numpy\ntrain: [epochs: 3\n")
    with pytest.raises(UserError, match=r"cannot parse .*bad.yaml at line \d+") as info:
        read_spec_file(f)
    assert "\n" not in str(info.value)


def test_yaml_must_be_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        read_spec_file(f)


def test_missing_spec_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_spec_file(tmp_path / "nope.yaml")
