"""Feature-extractor epochs with frozen-prefix caching ÷ without (VGG16 conv base at 64x64; target ≤ 0.1).

With the whole conv base frozen and no augmentation, its outputs are the same
every epoch: tle computes them once and later epochs train the head only.
Random (not ImageNet) weights: the cost of a forward pass does not depend on them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import report, tle_epoch_seconds  # noqa: E402

from tle.data import load_dataset  # noqa: E402
from tle.contract.spec import ExperimentSpec  # noqa: E402

EPOCHS = 3


def spec(cache: bool, backend: str = "torch") -> ExperimentSpec:
    return ExperimentSpec(backend=backend, model="vgg16", strategy="feature-extractor",
                          dataset={"source": "synthetic", "image_size": 64,
                                   "synthetic": {"classes": 4, "per_class": 80, "size": 64}},
                          train={"epochs": EPOCHS, "batch_size": 32, "seed": 0, "device": "cpu",
                                 "cache_features": cache})


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
    data = load_dataset(spec(True, backend).dataset, seed=0)
    stage_cached: list[float] = []
    stage_plain: list[float] = []
    cached = tle_epoch_seconds(spec(True, backend), data, stage_seconds=stage_cached)
    plain = tle_epoch_seconds(spec(False, backend), data, stage_seconds=stage_plain)
    later_cached = sum(cached[1:]) / len(cached[1:])
    later_plain = sum(plain[1:]) / len(plain[1:])
    report(f"{backend}: frozen-prefix caching, VGG16 conv base frozen, 64x64, {len(data.y_train)} train images", [
        ("computing the cached features (once per stage)", f"{stage_cached[0] - sum(cached):.2f} s"),
        ("epochs with caching", f"{later_cached:.3f} s"),
        ("epochs without caching", f"{later_plain:.2f} s"),
        ("ratio cached / uncached after the first epoch (target <= 0.1)", f"{later_cached / later_plain:.4f}"),
        (f"ratio for the whole {EPOCHS}-epoch stage, feature pass included", f"{stage_cached[0] / stage_plain[0]:.3f}"),
    ])


if __name__ == "__main__":
    main()
