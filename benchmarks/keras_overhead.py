"""tle's epoch time ÷ a hand-written Keras ``fit`` on the same model, data and batch size (target ≤ 1.02)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import build, overhead_report, overhead_spec  # noqa: E402

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
    overhead_report("Keras fit", overhead_spec("keras", EPOCHS), hand_written_epochs, ROUNDS)


if __name__ == "__main__":
    main()
