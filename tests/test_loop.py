"""The core's side of the training loop: steps, timing, early stopping, progress."""

import io

from rich.console import Console

from tle.contract.loop import History, Listeners, TrainLoop
from tle.progress import make_progress, track
from tle.contract.strategy import Stage


def stage(epochs=5, index=0):
    return Stage(index, "train", {"block1": True, "head": True}, epochs, 1e-3)


def drive(loop, accs):
    for epoch, acc in enumerate(accs):
        if loop.should_stop:
            break
        loop.epoch_start(epoch, 3)
        for _ in range(3):
            loop.batch_end(1, 0.5)
        loop.epoch_end(epoch, {"train_loss": 1.0, "train_acc": acc, "val_loss": 1.0, "val_acc": acc})


def test_steps_continue_across_stages_and_epochs_are_timed():
    history, seen = History(), []
    drive(TrainLoop(stage(2), history, listeners=Listeners(on_epoch=seen.append)), [0.1, 0.2])
    drive(TrainLoop(stage(3, 1), history, step_offset=2, listeners=Listeners(on_epoch=seen.append)), [0.3, 0.4, 0.5])
    assert [r.step for r in seen] == [0, 1, 2, 3, 4] and [r.stage for r in seen] == [0, 0, 1, 1, 1]
    assert all(r.metrics["epoch_seconds"] >= 0 for r in seen)
    assert history.series("val_acc") == [0.1, 0.2, 0.3, 0.4, 0.5] and history.best() == 0.5


def test_early_stopping_on_val_acc_patience():
    loop = TrainLoop(stage(10), patience=2)
    drive(loop, [0.5, 0.6, 0.6, 0.55, 0.9, 0.9])
    assert loop.epochs_done == 4 and loop.should_stop  # two epochs without a new best after 0.6


def test_progress_shows_epochs_and_tracked_passes():
    buffer = io.StringIO()
    progress = make_progress(Console(file=buffer, width=120, force_terminal=False), quiet=False)
    with progress:
        loop = TrainLoop(stage(2), listeners=Listeners(progress=progress))
        assert list(loop.track(range(4), 4, "caching")) == [0, 1, 2, 3]
        drive(loop, [0.7, 0.8])
        loop.close()
    text = buffer.getvalue()
    assert "stage 0 train" in text and "val_acc 0.8000" in text
    assert make_progress(Console(file=io.StringIO()), quiet=True) is None
    assert list(track(iter("abc"), None, 3, "x")) == ["a", "b", "c"]
