"""Shared pieces of the benchmarks: timing through tle's own hooks and loop.

Benchmarks print ratios measured in one run on one machine; they are not part
of the test suite's pass/fail.
"""

from __future__ import annotations

import statistics
import time

from tle.contract.records import Blueprint, ResolvedWeights
from tle.contract.loop import History, TrainLoop
from tle.backends.manager import load_backend
from tle.contract.spec import ExperimentSpec
from tle.contract.strategy import Rates, Tuning, build_plan


def build(spec: ExperimentSpec, data, weights: ResolvedWeights | None = None):
    backend = load_backend(spec.backend)
    info = backend.model(spec.model)
    plan = build_plan(spec.strategy, info.blocks, Rates.of(spec.train), Tuning.of(spec.train))
    model = backend.hook.load_backbone(blueprint=Blueprint(model=spec.model, class_names=data.class_names,
                                                           input_shape=data.input_shape, head=spec.head,
                                                           device=spec.train.device, precision=spec.train.precision,
                                                           seed=spec.train.seed),
                                       weights=weights or ResolvedWeights(kind="none"))
    return backend, plan, model


def tle_epoch_seconds(spec: ExperimentSpec, data, weights: ResolvedWeights | None = None,
                      stage_seconds: list[float] | None = None) -> list[float]:
    """Per-epoch wall times of the backend's train hook driven by the core's TrainLoop.

    ``stage_seconds`` receives the whole hook's time, which includes one-off work such as
    computing cached features before the first epoch.
    """
    backend, plan, model = build(spec, data, weights)
    stage = plan.stages[0]
    backend.hook.freeze_policy(model=model, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats,
                               params=stage.params)
    history = History()
    loop = TrainLoop(stage, step_offset=0, history=history, on_epoch=lambda record: None)
    t0 = time.perf_counter()
    backend.hook.train(model=model, data=data, stage=stage, train=spec.train, loop=loop)
    if stage_seconds is not None:
        stage_seconds.append(time.perf_counter() - t0)
    return [r.metrics["epoch_seconds"] for r in history.records]


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def overhead_spec(backend: str, epochs: int) -> ExperimentSpec:
    """The run both overhead benchmarks time: vgg_small from scratch on 1,500 synthetic 32 px images, batch 64, CPU."""
    return ExperimentSpec(backend=backend, model="vgg_small", strategy="scratch",
                          dataset={"source": "synthetic", "synthetic": {"classes": 10, "per_class": 150, "size": 32}},
                          train={"epochs": epochs, "batch_size": 64, "seed": 0, "device": "cpu"})


def overhead_report(framework: str, spec: ExperimentSpec, hand_written, rounds: int) -> None:
    """Best-of-rounds median epoch of tle and of ``hand_written(spec, data)``, measured interleaved
    so that a noisy neighbour on the machine hits both sides alike."""
    from tle.data import load_dataset

    data = load_dataset(spec.dataset, seed=0)
    hand_times, tle_times = [], []
    for i in range(rounds):
        # Each round's first epoch warms up; the fastest of the rest is the least disturbed by the
        # machine (on 2 shared cores, medians swing by +-10% between runs). The order alternates so
        # that a drift in the machine's speed does not always fall on the same side.
        first, second = (hand_written, tle_epoch_seconds) if i % 2 == 0 else (tle_epoch_seconds, hand_written)
        a, b = first(spec, data)[1:], second(spec, data)[1:]
        hand_times += a if first is hand_written else b
        tle_times += b if first is hand_written else a
    hand, tle = min(hand_times), min(tle_times)
    report(f"tle vs hand-written {framework} ({spec.model}, batch {spec.train.batch_size}, CPU)", [
        ("images per epoch (train + val)", f"{len(data.y_train)} + {len(data.y_val)}"),
        (f"hand-written epoch (fastest of {len(hand_times)})", f"{hand:.3f} s"),
        (f"tle epoch (fastest of {len(tle_times)})", f"{tle:.3f} s"),
        ("ratio tle / hand-written (target <= 1.02)", f"{tle / hand:.3f}"),
    ])


def report(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
