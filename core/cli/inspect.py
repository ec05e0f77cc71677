"""Inspection without training: ``tle backends``, ``tle models``, ``tle plan``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

from rich.table import Table

from tle.cli.app import Opt, app, out
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
    strategy: Annotated[str, Opt(help="strategy, e.g. finetune:block5")] = "scratch",
    image_size: Annotated[Optional[int], Opt(help="input side in pixels (default: the model's)")] = None,
    channels: Annotated[int, Opt(help="input channels")] = 3,
    classes: Annotated[int, Opt(help="number of classes of the new head")] = 10,
    head: Annotated[str, Opt(help="dense | linear | original")] = "dense",
    epochs: Annotated[int, Opt(help="epochs of the first stage")] = 5,
    stdp_presentations: Annotated[Optional[int], Opt(help="images presented to each STDP layer at most "
                                                          "(train.stdp.presentations; spiking models)")] = None,
    batchnorm: Annotated[str, Opt(help="frozen | train: BatchNorm statistics of pretrained blocks")] = "frozen",
    json_out: Annotated[bool, Opt("--json", help="print the plan as JSON")] = False,
) -> None:
    """Show which blocks start pretrained and which train in each stage, with parameter counts."""
    from tle.run.assembly import Blueprint, build
    from tle.run.runner import check_counts, prepare
    from tle.contract.spec import build_spec

    if classes < 2:
        raise UserError(f"--classes {classes}: a classifier needs at least two classes", "give --classes 2 or more")
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size {image_size} is not a size", "give a side in pixels, e.g. --image-size 32")
    spec = build_spec({"backend": backend, "model": model, "strategy": strategy, "weights": "imagenet",
                       "head": {"kind": head}, "train": {"epochs": epochs, "batchnorm": batchnorm}},
                      {"train.stdp.presentations": stdp_presentations})
    budget = spec.train.stdp.presentations
    be, the_plan = prepare(spec)
    info = be.model(model)
    side = image_size or info.default_size or 32
    # Counts only: placeholder class names, no weights (the plan says which blocks would start pretrained).
    native = build(be.hook, Blueprint(model, tuple(str(i) for i in range(classes)), (side, side, channels), spec.head))
    stages = []
    for stage in the_plan.stages:
        be.hook.freeze_policy(model=native, trainable=dict(stage.trainable), fixed_stats=stage.fixed_stats)
        counts = list(be.hook.count_parameters(model=native))
        check_counts(stage, counts, backend)
        stages.append((stage, counts))
    if json_out:
        print(json.dumps({"strategy": str(the_plan.strategy), "input": [side, side, channels], "stages": [
            {"index": s.index, "name": s.name, "epochs": s.epochs, "lr": s.lr, "batchnorm": spec.train.batchnorm,
             "fixed_stats": list(s.fixed_stats), "learned_stats": _learned_stats(s),
             "phases": [{"block": p.block, "rule": p.rule, "presentations": budget if p.presented else None}
                        for p in _phases(info, s)],
             "blocks": [{"name": c.name, "total": c.total, "trainable": c.trainable,
                         "start": _start(the_plan, c.name)} for c in counts]} for s, counts in stages]}))
        return
    table = Table(title=f"{backend}/{model} {the_plan.strategy} at {side}x{side}x{channels}, {classes} classes")
    table.add_column("block")
    table.add_column("params", justify="right")
    table.add_column("starts")
    for stage, _ in stages:
        table.add_column(f"stage {stage.index}: {stage.name}\n{stage.epochs} ep, lr {stage.lr:g}", justify="right")
    names = [c.name for c in stages[0][1]]
    for i, name in enumerate(names):
        cells = []
        for stage, counts in stages:
            c = counts[i]
            rule = {p.block: p for p in _phases(info, stage)}.get(name)
            how = f" · {rule.describe(stage.epochs, budget)}" if rule is not None else ""
            cells.append(f"[green]train {c.trainable:,}{how}[/]" if c.trainable else "[dim]frozen[/]")
        table.add_row(name, f"{stages[0][1][i].total:,}", _start(the_plan, name), *cells)
    total = sum(c.total for c in stages[0][1])
    table.add_section()
    table.add_row("total", f"{total:,}", "", *["" for _ in stages])
    table.add_row("trainable", "", "", *[f"{sum(c.trainable for c in counts):,}" for _, counts in stages])
    table.add_row("frozen", "", "", *[f"{sum(c.total - c.trainable for c in counts):,}" for _, counts in stages])
    table.add_row(f"BN stats ({spec.train.batchnorm})", "", "", *[_stats_cell(stage) for stage, _ in stages])
    if info.phases:
        # Layer-by-layer training: say in which order the trainable blocks learn within each stage.
        table.add_row("phases", "", "", *[" → ".join(f"{p.block} {p.rule}" for p in _phases(info, stage))
                                          for stage, _ in stages])
    out.print(table)


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
