"""``tle init-study``: S4's initialiser comparison in every backend, or a real model's blocks at initialisation."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

from rich.progress import TaskID
from rich.table import Table

from tle.cli.app import STATE, Opt, QuietOpt, TrackingUriOpt, app, err, out, output_file
from tle.errors import UserError

FORMATS = ("table", "markdown", "csv", "json")
DENSE_ONLY = ("samples", "features", "units", "activation")
MODEL_ONLY = ("dataset", "image_size", "channels", "batch", "device")


@app.command("init-study")
def init_study(
    init: Annotated[Optional[list[str]], Opt("--init", help="initialiser, repeatable (default: zeros, normal:1, "
                                                           "glorot/he/lecun normal and uniform)")] = None,
    backend: Annotated[Optional[list[str]], Opt("--backend", help="repeatable (default: every installed backend "
                                                                  "that implements the study's hook)")] = None,
    model: Annotated[Optional[str], Opt(help="a real model: per-block activation statistics at initialisation")] = None,
    dataset: Annotated[Optional[str], Opt(help="with --model: where the batch of images comes from "
                                                 "(default digits)")] = None,
    image_size: Annotated[Optional[int], Opt(help="with --model: square image side "
                                                  "(default: the model's usual)")] = None,
    channels: Annotated[Optional[int], Opt(help="with --model: 1 or 3")] = None,
    batch: Annotated[Optional[int], Opt(help="with --model: images in the batch (default 32)")] = None,
    device: Annotated[Optional[str], Opt(help="with --model: auto | cpu | cuda | cuda:N (default auto)")] = None,
    samples: Annotated[Optional[int], Opt(help="input vectors U[0,1) (default 1000)")] = None,
    features: Annotated[Optional[int], Opt(help="inputs per vector (default 784)")] = None,
    units: Annotated[Optional[int], Opt(help="neurons in the dense layer (default 256)")] = None,
    activation: Annotated[Optional[str], Opt(help="sigmoid | tanh | relu (default sigmoid)")] = None,
    seed: Annotated[Optional[list[int]], Opt("--seed", help="repeatable; tables show mean ± sd over the seeds "
                                                            "(default 0 1 2; with --model 0)")] = None,
    plot: Annotated[Optional[Path], Opt(help="PNG to write (default ./init-study.png, ./init-study-MODEL.png)")] = None,
    format_: Annotated[str, Opt("--format", help="table | markdown | csv | json")] = "table",
    experiment: Annotated[str, Opt(help="MLflow experiment name")] = "init-study",
    tracking_uri: TrackingUriOpt = None,
    track: Annotated[bool, Opt("--track/--no-track", help="log the study to MLflow")] = True,
    quiet: QuietOpt = False,
) -> None:
    """Activation histograms per initialiser across backends (S4), or a model's blocks at initialisation."""
    from tle.studies import init_study as study

    STATE["quiet"] |= quiet
    if format_ not in FORMATS:
        raise UserError(f"unknown --format {format_!r}", f"choose one of {', '.join(FORMATS)}")
    given = {"samples": samples, "features": features, "units": units, "activation": activation,
             "dataset": dataset, "image_size": image_size, "channels": channels, "batch": batch, "device": device}
    wrong = [k for k, v in given.items() if v is not None and k in (MODEL_ONLY if model is None else DENSE_ONLY)]
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise UserError(f"{flags} {'apply' if len(wrong) > 1 else 'applies'} "
                        f"{'only with --model' if model is None else 'to the dense study, not with --model'}",
                        "see 'tle init-study --help'")
    negative = [s for s in seed or [] if s < 0]
    if negative:
        raise UserError(f"--seed must be a non-negative integer, not {min(negative)}",
                        "e.g. --seed 0 --seed 1 --seed 2")
    inits = study.parse_inits(init)
    hook = study.BLOCK_HOOK if model else study.DENSE_HOOK
    backends = study.select_backends(backend, hook, model)
    data = _dataset(dataset or "digits", image_size, channels, model, backends[0]) if model else None
    plot = plot or Path(f"init-study-{model}.png" if model else "init-study.png")
    plot = output_file(plot, "--plot", ".png")

    from tle.progress import make_progress

    progress = make_progress(err, STATE["quiet"])
    tasks: dict[str, TaskID] = {}

    def advance(name: str, done_init: str | None) -> None:
        if progress is None:
            return
        if done_init is None:  # the worker starts: its clock starts too (importing a framework takes seconds)
            progress.start_task(tasks[name])
        else:
            progress.update(tasks[name], advance=1, info=done_init)

    workdir = Path(tempfile.mkdtemp(prefix="tle-init-study-"))
    try:
        with progress if progress is not None else nullcontext():
            if progress is not None:
                for name in backends:
                    tasks[name] = progress.add_task(f"init-study {name}", total=len(inits), info="", start=False)
            if model:
                assert data is not None  # read above for a --model study
                result = study.run_model(study.StudyRequest(backends, inits, workdir, seed or [0], advance),
                                         study.ModelBatch(model, data, _or(batch, 32), device=device or "auto"))
            else:
                layer = study.DenseLayer(_or(samples, 1000), _or(features, 784), _or(units, 256),
                                         activation or "sigmoid")
                result = study.run_dense(study.StudyRequest(backends, inits, workdir, seed or [0, 1, 2], advance),
                                         layer)
        from tle.studies import init_plots

        # The artifact keeps one name in every run, whatever --plot says.
        png = workdir / ("block_profile.png" if model else "init_histograms.png")
        (init_plots.block_profile if model else init_plots.histogram_grid)(result, png)
        shutil.copyfile(png, plot)  # first, so the picture survives a tracking server that is down
        result.plot = plot.resolve()
        if track:
            name = f"init-study-{model}" if model else "init-study"
            result.run_id = study.track(result, png, tracking_uri, experiment, name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _print(result, format_)
    if format_ != "json" and not STATE["quiet"]:
        where = f"; MLflow run {result.run_id} in experiment {experiment!r}" if result.run_id else ""
        err.print(f"plot: {result.plot}{where}", highlight=False, soft_wrap=True)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value  # 0 must reach the check that rejects it


def _dataset(source: str, image_size: int | None, channels: int | None, model: str, backend: str) -> dict:
    from pydantic import ValidationError

    from tle.backends.manager import load_backend
    from tle.contract.spec import DataSpec

    if image_size is None:
        image_size = load_backend(backend).model(model).default_size
    try:
        # Validated from a dict: --channels is any int here, and pydantic says which it accepts (1 or 3).
        spec = DataSpec.model_validate({"source": source, "image_size": image_size, "channels": channels})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "dataset"
        raise UserError(f"bad dataset option {field}: {first['msg']}", "see 'tle init-study --help'") from None
    return {"source": spec.source, **spec.model_dump(mode="json", exclude_defaults=True)}


# -- output -------------------------------------------------------------------------------


def _pm(row: dict, stat: str, spec: str, seeds: int, sd_spec: str | None = None) -> str:
    return f"{row[stat]:{spec}}" + (f" ± {row[stat + '_sd']:{sd_spec or spec}}" if seeds > 1 else "")


def _dense_rows(result) -> tuple[list[str], list[list[str]]]:
    # For a ReLU, "saturated" is its flat half: the activation is zero.
    label = "dead" if result.config["activation"] == "relu" else "saturated"
    header = ["init"] + [f"{b} {what}" for b in result.backends for what in (label, "std")]
    summary = {(r["backend"], r["init"]): r for r in result.summary()}
    n = len(result.seeds)
    rows = []
    for init in result.inits:
        row = [init]
        for b in result.backends:
            row += [_pm(summary[b, init], "saturated_fraction", ".3f", n), _pm(summary[b, init], "std", ".3f", n)]
        rows.append(row)
    return header, rows


def _model_rows(result) -> tuple[list[str], list[list[str]]]:
    header = ["backend", "init", "block", "shape", "mean", "std", "zero", "dead ch."]
    n = len(result.seeds)
    rows = [[r["backend"], r["init"], r["block"], "x".join(map(str, r["shape"])), _pm(r, "mean", ".3g", n, ".2g"),
             _pm(r, "std", ".3g", n, ".2g"), _pm(r, "zero_fraction", ".3f", n), _pm(r, "dead_units", ".3f", n)]
            for r in result.summary()]
    return header, rows


def _title(result) -> str:
    c = result.config
    seeds = "seed " + str(result.seeds[0]) if len(result.seeds) == 1 else f"mean ± sd over {len(result.seeds)} seeds"
    if result.mode == "dense":
        return (f"{c['features']} inputs U[0,1) -> Dense {c['units']} {c['activation']}, bias 0, {c['samples']} "
                f"samples: saturated fraction and std of the activations ({seeds})")
    return (f"{c['model']} at initialisation, {c['data'].get('images')} images of {c['dataset']['source']} "
            f"({'x'.join(map(str, c['data'].get('input_shape', [])))}; {seeds})")


def _print(result, format_: str) -> None:
    if format_ == "json":
        print(json.dumps(result.as_dict()))
        return
    if format_ == "csv":
        rows = [c.row() for c in result.cells]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "x".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
        print(buffer.getvalue(), end="")
        return
    header, rows = _dense_rows(result) if result.mode == "dense" else _model_rows(result)
    if format_ == "markdown":
        print(f"{_title(result)}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i < (1 if result.mode == "dense" else 4) else "---:"
                             for i in range(len(header))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()  # a table ends at a blank line, so several outputs can be pasted one after the other
        return
    table = Table(title=_title(result))
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i < (1 if result.mode == "dense" else 4) else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    if result.mode == "dense" and result.config["activation"] == "sigmoid":
        err.print("saturated: |a - 0.5| > 0.45 (the sigmoid's flat ends, where gradients vanish)", highlight=False)
