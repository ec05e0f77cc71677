"""tle's epoch time ÷ a hand-written Keras ``fit`` on the same model, data and batch size (target ≤ 1.02)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import build, median_after_warmup, report, tle_epoch_seconds  # noqa: E402

from tle.data import load_dataset  # noqa: E402
from tle.spec import ExperimentSpec  # noqa: E402

EPOCHS = 4
ROUNDS = 3


def hand_written_epochs(spec, data) -> list[float]:
    """What a Keras user writes: compile, then fit with validation data, timing each epoch."""
    import time

    import keras

    _, _, handle = build(spec, data)
    model = handle.net  # the keras.Model inside the backend's handle
    model.compile(optimizer=keras.optimizers.Adam(spec.train.lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    model.fit(data.x_train, data.y_train, batch_size=spec.train.batch_size, epochs=EPOCHS,
              validation_data=(data.x_val, data.y_val), callbacks=[Clock()], verbose=0)
    return times


def main() -> None:
    spec = ExperimentSpec(backend="keras", model="vgg_small", strategy="scratch",
                          dataset={"source": "synthetic", "synthetic": {"classes": 10, "per_class": 150, "size": 32}},
                          train={"epochs": EPOCHS, "batch_size": 64, "seed": 0, "device": "cpu"})
    data = load_dataset(spec.dataset, seed=0)
    hand_times, tle_times = [], []
    for _ in range(ROUNDS):  # interleaved, so a noisy neighbour hits both sides alike
        hand_times.append(median_after_warmup(hand_written_epochs(spec, data)))
        tle_times.append(median_after_warmup(tle_epoch_seconds(spec, data)))
    hand, tle = min(hand_times), min(tle_times)
    report("tle vs hand-written Keras fit (vgg_small, 32x32, batch 64, CPU)", [
        ("images per epoch (train + val)", f"{len(data.y_train)} + {len(data.y_val)}"),
        ("hand-written fit epoch (best of rounds, median epoch)", f"{hand:.3f} s"),
        ("tle epoch (best of rounds, median epoch)", f"{tle:.3f} s"),
        ("ratio tle / hand-written (target <= 1.02)", f"{tle / hand:.3f}"),
    ])


if __name__ == "__main__":
    main()
