"""Fine-tuning does not undo the feature extractor it starts from (``train.batchnorm: frozen``), in both frameworks.

The case where it did: a BatchNorm backbone pretrained on digits 0-4, moved to synthetic images whose pixel
statistics differ, 20 images per class in batches of 20. Stage 2 of ``finetune:block4`` (blocks 4-5 at lr 1e-5,
2 epochs) barely moves the weights; re-estimating the pretrained blocks' BatchNorm statistics on batches of 20
of the new data moves the features under the head that stage 1 trained. Measured here, 3 seeds, torch:
feature-extractor 0.878 ± 0.010, finetune:block4 0.886 ± 0.005 with frozen statistics, 0.722 ± 0.075 with
``train`` (README, "BatchNorm when fine-tuning").
"""

import json
from importlib.util import find_spec

import pytest
import yaml

from conftest import tle

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_spec("tle_keras") is None or find_spec("tle_torch") is None,
                                                   reason="needs the torch and keras backends")]

GRID = {"name": "bn-finetune",
        "base": {"model": "resnet_small",
                 "dataset": {"source": "synthetic", "image_size": 32, "channels": 3, "train": 20,
                             "synthetic": {"classes": 10}},
                 "train": {"epochs": 6, "batch_size": 20}, "tracking": {"experiment": "bn-finetune"}},
        "pretrain": {"dataset": {"source": "digits:0-4", "train": None}, "train": {"seed": 0}},
        "axes": {"backend": ["torch", "keras"], "strategy": ["feature-extractor", "finetune:block4"],
                 "train.seed": [0, 1, 2]}}


def sweep(tmp_path, grid, *extra) -> dict:
    path = tmp_path / f"{grid['name']}.yaml"
    path.write_text(yaml.safe_dump(grid))
    proc = tle("--quiet", "sweep", path, "--jobs", "2", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
               "--format", "json", *extra, timeout=1500, check_rc=0)
    backends = grid["axes"]["backend"]  # an axis of one value is not a column of the table
    return {(g.get("backend", backends[0]), g["strategy"]): g for g in json.loads(proc.stdout)["groups"]}


def loss(groups, backend) -> tuple[float, float]:
    fe, ft = groups[(backend, "feature-extractor")], groups[(backend, "finetune:block4")]
    assert fe["n"] == ft["n"] == 3 and fe["failed"] == ft["failed"] == 0
    return fe["test_acc_mean"] - ft["test_acc_mean"], fe["test_acc_sd"] + ft["test_acc_sd"]


def test_finetuning_keeps_the_feature_extractors_accuracy(tmp_path):
    groups = sweep(tmp_path, GRID)
    print({k: (round(v["test_acc_mean"], 3), round(v.get("test_acc_sd", float("nan")), 3)) for k, v in groups.items()})
    for backend in ("torch", "keras"):
        drop, spread = loss(groups, backend)
        assert groups[(backend, "feature-extractor")]["test_acc_mean"] > 0.5, groups  # ten classes: chance 0.1
        assert drop <= spread, (backend, drop, spread, groups)
    # The test can fail: with the statistics re-estimated, the same stage 2 loses more than the seed spread.
    grid = {**GRID, "name": "bn-finetune-train", "axes": {**GRID["axes"], "backend": ["torch"]}}
    drop, spread = loss(sweep(tmp_path, grid, "--set", "train.batchnorm=train"), "torch")
    assert drop > spread, (drop, spread)
