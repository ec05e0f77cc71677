"""Inspection without training: ``tle backends``, ``tle models``, ``tle plan``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

from rich.table import Table

from tle.cli.app import JsonOpt, Opt, app, out, parse_sets
from tle.contract.strategy import HEAD
from tle.errors import UserError


@app.command()
def backends() -> None:
    """List installed backends with their versions and status."""
    from tle.backends.manager import survey_backends

    table = Table(title="backends (entry-point group tle.backends)")
    for col in ("name", "package", "framework", "status", "module"):
        table.add_column(col)
    for row in survey_backends():
        style = "green" if row.status == "ok" else "red"
        table.add_row(row.name, row.package_version, f"{row.framework} {row.framework_version}",
                      f"[{style}]{row.status}[/]", row.target)
    out.print(table)


@app.command()
def models(backend: Annotated[str, Opt(help="backend name")]) -> None:
    """List a backend's models with their blocks."""
    from tle.backends.manager import load_backend

    found = load_backend(backend).models()
    table = Table(title=f"models of backend {backend}")
    for col in ("model", "family", "blocks", "input", "status"):
        table.add_column(col)
    for name, info in sorted(found.items()):
        status = "ok" if info.available else f"[red]unavailable: {info.reason}[/]"
        size = f"{info.default_size}px" if info.default_size else "any"
        table.add_row(name, info.family, " ".join(info.blocks), size, status)
    out.print(table)


@app.command()
def plan(
    backend: Annotated[str, Opt(help="backend name")],
    model: Annotated[str, Opt(help="model name")],
    strategy: Annotated[str, Opt(help="strategy, e.g. finetune:block5, gradual:block3, lp-ft")] = "scratch",
    image_size: Annotated[Optional[int], Opt(help="input side in pixels (default: the model's)")] = None,
    channels: Annotated[int, Opt(help="input channels")] = 3,
    classes: Annotated[int, Opt(help="number of classes of the new head")] = 10,
    head: Annotated[str, Opt(help="dense | linear | original")] = "dense",
    epochs: Annotated[int, Opt(help="epochs of the first stage")] = 5,
    stdp_presentations: Annotated[Optional[int], Opt(help="images presented to each STDP layer at most "
                                                          "(train.stdp.presentations; spiking models)")] = None,
    batchnorm: Annotated[str, Opt(help="frozen | train: BatchNorm statistics of pretrained blocks")] = "frozen",
    set_: Annotated[Optional[list[str]], Opt("--set", help="any train field, e.g. --set train.lr_decay=0.7 "
                                                           "--set train.schedule=cosine --set train.l2sp=0.01,0.01")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show which blocks start pretrained and which train in each stage, with parameter counts, each block's
    learning-rate factor, regulariser and BatchNorm mode, and each stage's learning rate per epoch."""
    from tle.run.assembly import Blueprint, build
    from tle.run.runner import freeze, prepare
    from tle.contract.spec import build_spec

    if classes < 2:
        raise UserError(f"--classes {classes}: a classifier needs at least two classes", "give --classes 2 or more")
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size {image_size} is not a size", "give a side in pixels, e.g. --image-size 32")
    spec = build_spec({"backend": backend, "model": model, "strategy": strategy, "weights": "imagenet",
                       "head": {"kind": head}, "train": {"epochs": epochs, "batchnorm": batchnorm}},
                      {"train.stdp.presentations": stdp_presentations, **parse_sets(set_ or [])})
    budget = spec.train.stdp.presentations
    be, the_plan = prepare(spec)
    info = be.model(model)
    side = image_size or info.default_size or 32
    # Counts only: placeholder class names, no weights (the plan says which blocks would start pretrained).
    native = build(be.hook, Blueprint(model, tuple(str(i) for i in range(classes)), (side, side, channels), spec.head))
    stages = [(stage, freeze(be, native, stage)) for stage in the_plan.stages]
    if json_out:
        print(json.dumps({"strategy": str(the_plan.strategy), "input": [side, side, channels],
                          "lr_decay": spec.train.lr_decay, "params": spec.train.params,
                          "l2sp": spec.train.l2sp.model_dump() if spec.train.l2sp is not None else None,
                          "stages": [_stage_json(the_plan, s, counts, info, budget, spec) for s, counts in stages]}))
        return
    table = Table(title=f"{backend}/{model} {the_plan.strategy} at {side}x{side}x{channels}, {classes} classes")
    table.add_column("block")
    table.add_column("params", justify="right")
    table.add_column("starts")
    for stage, _ in stages:
        how = "" if stage.schedule.constant else f"\n{stage.schedule}"
        table.add_column(f"stage {stage.index}: {stage.name}\n{stage.epochs} ep, lr {stage.lr:g}{how}", justify="right")
    names = [c.name for c in stages[0][1]]
    for i, name in enumerate(names):
        cells = [_block_cell(info, stage, counts[i], budget) for stage, counts in stages]
        table.add_row(name, f"{stages[0][1][i].total:,}", _start(the_plan, name), *cells)
    total = sum(c.total for c in stages[0][1])
    table.add_section()
    table.add_row("total", f"{total:,}", "", *["" for _ in stages])
    table.add_row("trainable", "", "", *[f"{sum(c.trainable for c in counts):,}" for _, counts in stages])
    table.add_row("frozen", "", "", *[f"{sum(c.total - c.trainable for c in counts):,}" for _, counts in stages])
    table.add_row(f"BN stats ({spec.train.batchnorm})", "", "", *[_stats_cell(stage) for stage, _ in stages])
    if not info.phases:  # a spiking net's rules have no learning rate
        table.add_row("lr per epoch", "", "", *[_rates_cell(stage) for stage, _ in stages])
    if info.phases:
        # Layer-by-layer training: say in which order the trainable blocks learn within each stage.
        table.add_row("phases", "", "", *[" → ".join(f"{p.block} {p.rule}" for p in _phases(info, stage))
                                          for stage, _ in stages])
    out.print(table)


def _block_cell(info, stage, count, budget: int) -> str:
    """One block in one stage: what trains of it, at which factor of the stage's rate, its BatchNorm statistics
    (where it has normalisation parameters), its regulariser."""
    if not count.trainable and not (stage.trainable.get(count.name) and count.name != HEAD):
        return "[dim]frozen[/]"
    rule = {p.block: p for p in _phases(info, stage)}.get(count.name)
    parts = [f"train {count.trainable:,}" + (f" · {rule.describe(stage.epochs, budget)}" if rule is not None else "")]
    if stage.params != "all" and count.name != HEAD:
        parts[0] += f" ({stage.params})"
    details = [] if info.phases else [f"lr×{stage.factor(count.name):.3g}"]
    if count.norm and count.name != HEAD:
        details.append("BN kept" if count.name in stage.fixed_stats else "BN learned")
    if details:
        parts.append(" · ".join(details))
    if stage.l2sp is not None:
        parts.append(stage.l2sp.describe(count.name))
    return "[green]" + "\n".join(parts) + "[/]"


def _rates_cell(stage, shown: int = 6) -> str:
    rates = [f"{r:.3g}" for r in stage.rates()]
    if len(rates) > shown:
        rates = rates[:shown - 2] + ["…", rates[-1]]
    return " ".join(rates)


def _stage_json(the_plan, s, counts, info, budget: int, spec) -> dict:
    return {"index": s.index, "name": s.name, "epochs": s.epochs, "lr": s.lr, "batchnorm": spec.train.batchnorm,
            "fixed_stats": list(s.fixed_stats), "learned_stats": _learned_stats(s), "params": s.params,
            "schedule": {"kind": s.schedule.kind, "warmup_epochs": s.schedule.warmup_epochs, "rates": list(s.rates())},
            "phases": [{"block": p.block, "rule": p.rule, "presentations": budget if p.presented else None}
                       for p in _phases(info, s)],
            "blocks": [_block_json(the_plan, s, c) for c in counts]}


def _block_json(the_plan, s, c) -> dict:
    trains = bool(s.trainable.get(c.name))
    regulariser = None
    if s.l2sp is not None and trains:
        strength, toward_start = s.l2sp.pull(c.name)
        regulariser = {"kind": "l2sp", "strength": strength, "toward": "start" if toward_start else "zero"}
    return {"name": c.name, "total": c.total, "trainable": c.trainable, "bias": c.bias, "norm": c.norm,
            "start": _start(the_plan, c.name), "trains": trains,
            "lr_factor": s.factor(c.name) if trains else None, "lr": s.lr * s.factor(c.name) if trains else None,
            "stats": "kept" if c.name in s.fixed_stats else "learned", "regulariser": regulariser}


def _phases(info, stage) -> list:
    """The model's training phases that run in ``stage`` (those whose block trains), in order."""
    return [p for p in info.phases if stage.trainable.get(p.block)]


def _learned_stats(stage) -> list[str]:
    return [b for b, on in stage.trainable.items() if on and b not in stage.fixed_stats]


def _stats_cell(stage) -> str:
    """Which trainable blocks re-estimate their normalisation statistics in this stage, which keep them."""
    kept = [b for b in stage.fixed_stats if stage.trainable.get(b)]
    parts = [f"kept: {' '.join(kept)}"] if kept else []
    learned = _learned_stats(stage)
    if learned:
        parts.append(f"learned: {' '.join(learned)}")
    return "\n".join(parts)


def _start(the_plan, block: str) -> str:
    return "pretrained" if block in the_plan.pretrained else "init"
