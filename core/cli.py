"""The ``tle`` command line (typer + rich).

Heavy imports (MLflow, onnxruntime, frameworks) happen inside commands, so
``tle --help`` and ``tle backends`` stay fast. Every user error ends with exit
code 2 and one line; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tle.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transfer-learning experiments in any framework, tracked in MLflow, served with ONNX Runtime.")
# Result tables go to stdout at a readable width even when piped (rich would assume 80 columns).
out = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160)))
err = Console(stderr=True)
STATE = {"debug": False, "quiet": False}

Opt = typer.Option


@app.callback()
def _global(debug: Annotated[bool, Opt("--debug", help="show tracebacks")] = False,
            quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False) -> None:
    STATE["debug"] = STATE["debug"] or debug
    STATE["quiet"] = STATE["quiet"] or quiet


# -- run -------------------------------------------------------------------------


@app.command()
def run(
    config: Annotated[Optional[Path], Opt("--config", "-c", help="YAML or TOML experiment spec")] = None,
    backend: Annotated[Optional[str], Opt(help="backend name (see 'tle backends')")] = None,
    model: Annotated[Optional[str], Opt(help="model name (see 'tle models --backend B')")] = None,
    strategy: Annotated[Optional[str], Opt(help="scratch | feature-extractor | finetune:BLOCK | transfer:BLOCK|all")] = None,
    dataset: Annotated[Optional[str], Opt(help="digits[:0-4] | synthetic | folder:PATH | npz:PATH | mnist ...")] = None,
    init: Annotated[Optional[str], Opt(help="initialiser for re-initialised blocks, e.g. glorot_uniform, normal:0.05")] = None,
    weights: Annotated[Optional[str], Opt(help="none | imagenet | PATH | runs:/RUN_ID | models:/NAME/VERSION")] = None,
    head: Annotated[Optional[str], Opt(help="dense | linear | original")] = None,
    epochs: Annotated[Optional[int], Opt(help="epochs of the first stage")] = None,
    batch_size: Annotated[Optional[int], Opt(help="batch size")] = None,
    lr: Annotated[Optional[float], Opt(help="learning rate of the first stage")] = None,
    optimizer: Annotated[Optional[str], Opt(help="adam | adamw | sgd")] = None,
    finetune_lr: Annotated[Optional[float], Opt(help="learning rate of the fine-tuning stage")] = None,
    finetune_epochs: Annotated[Optional[int], Opt(help="epochs of the fine-tuning stage")] = None,
    seed: Annotated[Optional[int], Opt(help="seed for splits, init and shuffling")] = None,
    device: Annotated[Optional[str], Opt(help="auto | cpu | cuda | cuda:N")] = None,
    precision: Annotated[Optional[str], Opt(help="auto | fp32 | bf16 | fp16")] = None,
    image_size: Annotated[Optional[int], Opt(help="resize images to this square size")] = None,
    channels: Annotated[Optional[int], Opt(help="1 or 3")] = None,
    max_per_class: Annotated[Optional[int], Opt(help="cap images per class")] = None,
    early_stopping: Annotated[Optional[int], Opt(help="patience in epochs on val_acc")] = None,
    cache_features: Annotated[Optional[bool], Opt("--cache-features/--no-cache-features",
                                                  help="compute frozen prefixes once")] = None,
    export: Annotated[Optional[bool], Opt("--export/--no-export", help="export to ONNX and check parity")] = None,
    experiment: Annotated[Optional[str], Opt(help="MLflow experiment name")] = None,
    tracking_uri: Annotated[Optional[str], Opt(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")] = None,
    run_name: Annotated[Optional[str], Opt(help="MLflow run name")] = None,
    register: Annotated[Optional[str], Opt(help="register the ONNX model under this name")] = None,
    set_: Annotated[Optional[list[str]], Opt("--set", help="any spec field: --set train.weight_decay=1e-4")] = None,
    resume: Annotated[Optional[str], Opt(help="continue an interrupted run (KILLED/FAILED) in the same MLflow run")] = None,
    json_out: Annotated[bool, Opt("--json", help="print the result as JSON")] = False,
    debug: Annotated[bool, Opt("--debug", help="show tracebacks")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run one experiment and track it in MLflow."""
    from tle.spec import build_spec, read_spec_file

    STATE["debug"] |= debug
    STATE["quiet"] |= quiet
    overrides = {
        "backend": backend, "model": model, "strategy": strategy, "dataset.source": dataset, "init": init,
        "weights": weights, "head.kind": head, "train.epochs": epochs, "train.batch_size": batch_size,
        "train.lr": lr, "train.optimizer": optimizer, "train.finetune_lr": finetune_lr,
        "train.finetune_epochs": finetune_epochs, "train.seed": seed, "train.device": device,
        "train.precision": precision, "dataset.image_size": image_size, "dataset.channels": channels,
        "dataset.max_per_class": max_per_class, "train.early_stopping": early_stopping,
        "train.cache_features": cache_features, "export.onnx": export, "tracking.experiment": experiment,
        "tracking.uri": tracking_uri, "tracking.run_name": run_name, "tracking.registered_model": register,
    }
    overrides.update(_parse_sets(set_ or []))
    if resume:
        given = sorted(k for k, v in overrides.items() if v is not None and k != "tracking.uri")
        if given or config:
            raise UserError(f"--resume continues a run with its own spec; drop {', '.join(given) or '--config'}",
                            "start a new run to change settings")
        result = _resume(resume, tracking_uri)
        spec = result.spec
    else:
        spec = build_spec(read_spec_file(config) if config else {}, overrides)
        from tle.runner import run_experiment

        result = run_experiment(spec, console=err, quiet=STATE["quiet"])
    summary = {
        "run_id": result.run_id, "backend": spec.backend, "model": spec.model, "strategy": spec.strategy,
        "dataset": spec.dataset.source, "best_val_acc": result.best_val_acc, "test_acc": result.test.accuracy,
        "test_loss": result.test.loss, "epochs": len(result.history.records),
        "trainable_params": sum(c.trainable for c in result.counts[0]),
        "total_params": sum(c.total for c in result.counts[0]), "onnx_max_abs_diff": result.onnx_max_abs_diff,
        "wall_seconds": result.wall_seconds, "device": result.device,
    }
    if json_out:
        print(json.dumps(summary))
        return
    table = Table(title=f"run {result.run_id}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    diff = "-" if result.onnx_max_abs_diff is None else f"{result.onnx_max_abs_diff:.1e}"
    rows = [("backend / model", f"{spec.backend} / {spec.model} on {result.device}"),
            ("strategy", f"{spec.strategy}  (weights {spec.weights}, init {spec.init})"),
            ("dataset", f"{spec.dataset.source}"),
            ("best val acc", f"{result.best_val_acc:.4f}"),
            ("test acc / loss", f"{result.test.accuracy:.4f} / {result.test.loss:.4f}"),
            ("epochs", str(summary["epochs"])),
            ("trainable / total params", f"{summary['trainable_params']:,} / {summary['total_params']:,}"),
            ("ONNX max |diff|", diff),
            ("wall time", f"{result.wall_seconds:.1f}s")]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def _resume(run_id: str, tracking_uri: str | None):
    import shutil
    import tempfile

    from tle.resume import load_resume
    from tle.runner import run_experiment

    workdir = Path(tempfile.mkdtemp(prefix="tle-resume-"))
    try:
        state = load_resume(run_id, tracking_uri, workdir)
        spec = state.spec
        if tracking_uri:
            spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": tracking_uri})})
        return run_experiment(spec, console=err, quiet=STATE["quiet"], resume=state)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _parse_sets(items: list[str]) -> dict[str, object]:
    import yaml

    parsed: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE", "write e.g. --set train.weight_decay=1e-4")
        parsed[key.strip()] = yaml.safe_load(value) if value else value
    return parsed


# -- inspection ------------------------------------------------------------------


@app.command()
def backends() -> None:
    """List installed backends with their versions and status."""
    from tle.plugins import survey_backends

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
    from tle.plugins import load_backend

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
    json_out: Annotated[bool, Opt("--json", help="print the plan as JSON")] = False,
) -> None:
    """Show which blocks start pretrained and which train in each stage, with parameter counts."""
    from tle.contracts import ResolvedWeights
    from tle.runner import check_counts, prepare
    from tle.spec import build_spec

    spec = build_spec({"backend": backend, "model": model, "strategy": strategy, "weights": "imagenet",
                       "head": {"kind": head}, "train": {"epochs": epochs}})
    be, the_plan = prepare(spec)
    info = be.model(model)
    side = image_size or info.default_size or 32
    native = be.hook.load_backbone(model=model, num_classes=classes, class_names=[str(i) for i in range(classes)],
                                   input_shape=(side, side, channels),
                                   head=spec.head, weights=ResolvedWeights(kind="none"), device="cpu",
                                   precision="fp32", seed=0)
    stages = []
    for stage in the_plan.stages:
        be.hook.freeze_policy(model=native, trainable=dict(stage.trainable))
        counts = list(be.hook.count_parameters(model=native))
        check_counts(stage, counts, backend)
        stages.append((stage, counts))
    if json_out:
        print(json.dumps({"strategy": str(the_plan.strategy), "input": [side, side, channels], "stages": [
            {"index": s.index, "name": s.name, "epochs": s.epochs, "lr": s.lr,
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
        for _, counts in stages:
            c = counts[i]
            cells.append(f"[green]train {c.trainable:,}[/]" if c.trainable else "[dim]frozen[/]")
        table.add_row(name, f"{stages[0][1][i].total:,}", _start(the_plan, name), *cells)
    total = sum(c.total for c in stages[0][1])
    table.add_section()
    table.add_row("total", f"{total:,}", "", *["" for _ in stages])
    table.add_row("trainable", "", "", *[f"{sum(c.trainable for c in counts):,}" for _, counts in stages])
    table.add_row("frozen", "", "", *[f"{sum(c.total - c.trainable for c in counts):,}" for _, counts in stages])
    out.print(table)


def _start(the_plan, block: str) -> str:
    return "pretrained" if block in the_plan.pretrained else "init"


# -- models after training -------------------------------------------------------


def _onnx_from(ref: str, tracking_uri: str | None, dst: Path) -> Path:
    """An ONNX file for a path, a run id or runs:/ID."""
    path = Path(ref)
    if path.suffix == ".onnx" or path.exists():
        if not path.is_file():
            raise UserError(f"ONNX model {ref} does not exist", "give a .onnx file or a run id")
        return path
    from tle.tracking import artifact_files, configure

    mlflow = configure(tracking_uri)
    run_id = ref[len("runs:/"):].strip("/").split("/")[0] if ref.startswith("runs:/") else ref
    files = artifact_files(run_id, "model", dst)
    if files is None:
        raise UserError(f"{ref!r} is neither an ONNX file nor a run with an ONNX model in {mlflow.get_tracking_uri()}",
                        "give a .onnx path or a run id from 'tle compare' / the MLflow UI")
    found = [f for f in files if f.suffix == ".onnx"]
    if not found:
        raise UserError(f"run {run_id} has no ONNX model", "run it again with --export")
    return found[0]


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="run id (or runs:/ID)")],
    output: Annotated[Optional[Path], Opt("--output", "-o", help="where to write the .onnx file")] = None,
    tracking_uri: Annotated[Optional[str], Opt(help="MLflow tracking URI")] = None,
) -> None:
    """Write a run's ONNX model to a file."""
    import shutil
    import tempfile

    from tle.serving import open_model

    with tempfile.TemporaryDirectory() as tmp:
        src = _onnx_from(run_id if run_id.startswith("runs:/") else f"runs:/{run_id}", tracking_uri, Path(tmp))
        target = output or Path(f"{run_id.split('/')[-1][:12]}.onnx")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        for side in src.parent.glob(src.name + ".data"):
            shutil.copyfile(side, target.with_name(target.name + ".data"))
    loaded = open_model(target)
    out.print(f"wrote {target} ({len(loaded.class_names)} classes, input {loaded.image_size}, "
              f"providers {', '.join(loaded.used_providers)})")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help=".onnx file, run id or runs:/ID")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    top_k: Annotated[int, Opt("--top-k", "-k", min=1, help="classes to show per image")] = 3,
    json_out: Annotated[bool, Opt("--json", help="print JSON")] = False,
    tracking_uri: Annotated[Optional[str], Opt(help="MLflow tracking URI")] = None,
    cpu: Annotated[bool, Opt("--cpu", help="use the CPU even when CUDA is available")] = False,
) -> None:
    """Classify images with an exported ONNX model (ONNX Runtime, CUDA when present)."""
    import tempfile

    import numpy as np

    from tle.data.images import IMAGE_SUFFIXES, load_image
    from tle.serving import open_model, softmax

    files: list[Path] = []
    for p in images:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p} does not exist", "give image files or folders of images")
    if not files:
        raise UserError("no image files found", f"give files ending in {', '.join(sorted(IMAGE_SUFFIXES))}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_model = open_model(_onnx_from(model, tracking_uri, Path(tmp)), prefer_gpu=not cpu)
        size, ch = onnx_model.image_size, onnx_model.channels
        batch = np.stack([load_image(f, size=size, channels=ch) for f in files])
        probs = softmax(onnx_model.logits(batch))
    names = onnx_model.class_names
    k = min(top_k, probs.shape[1])
    rows = []
    for f, p in zip(files, probs):
        order = np.argsort(-p)[:k]
        rows.append({"file": str(f), "top": [{"class": names[i], "index": int(i), "prob": float(p[i])} for i in order]})
    if json_out:
        print(json.dumps({"model": str(onnx_model.path.name), "providers": onnx_model.used_providers,
                          "predictions": rows}))
        return
    table = Table(title=f"predictions ({', '.join(onnx_model.used_providers)})")
    table.add_column("image")
    for i in range(k):
        table.add_column(f"top {i + 1}", justify="right")
    for row in rows:
        table.add_row(row["file"], *[f"{t['class']} {t['prob']:.3f}" for t in row["top"]])
    out.print(table)


@app.command()
def compare(
    experiment: Annotated[str, Opt(help="MLflow experiment name")] = "tle",
    tracking_uri: Annotated[Optional[str], Opt(help="MLflow tracking URI")] = None,
    json_out: Annotated[bool, Opt("--json", help="print JSON")] = False,
) -> None:
    """Table of an experiment's runs across backends."""
    from tle.compare import load_runs

    rows = load_runs(experiment, tracking_uri)
    if json_out:
        for r in rows:
            r.pop("val_curve", None)
        print(json.dumps(rows))
        return
    table = Table(title=f"experiment {experiment}: {len(rows)} runs")
    cols = ("run", "backend", "model", "strategy", "dataset", "best val", "test acc", "jump", "speedup",
            "asym", "trainable", "time")
    for col in cols:
        table.add_column(col, justify="right" if col in cols[5:] else "left")
    for r in rows:
        status = "" if r["status"] == "FINISHED" else f" [red]{r['status']}[/]"
        table.add_row(f"{r['name'] or r['run_id'][:8]}{status}", r["backend"], r["model"], r["strategy"],
                      r["dataset"], _fmt(r["best_val_acc"], ".3f"), _fmt(r["test_acc"], ".3f"),
                      _fmt(r["jumpstart"], "+.3f"), _fmt(r["speedup"], ".1f", "x"), _fmt(r["asymptote_gain"], "+.3f"),
                      _fmt(r["trainable_params"], ",.0f"), _fmt(r["wall_seconds"], ".1f", "s"))
    out.print(table)
    if any(r["baseline"] for r in rows):
        err.print("jump/speedup/asym: jumpstart, epochs-to-90%-of-best speed-up and asymptote gain against the "
                  "scratch run of the same backend, model and data", highlight=False)


def _fmt(value, spec: str, suffix: str = "") -> str:
    if value is None:
        return "-"
    if value in (float("inf"), float("-inf")):
        return "never" if value < 0 else "inf"
    return f"{value:{spec}}{suffix}"


# -- entry point -----------------------------------------------------------------


def _on_sigterm(signum, frame):
    # A terminated run must end KILLED in MLflow, exactly like Ctrl-C.
    raise KeyboardInterrupt


def _click_exceptions():
    try:  # typer >= 0.20 vendors its own click
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> None:
    click = _click_exceptions()

    import logging

    argv = list(sys.argv[1:] if argv is None else argv)
    # MLflow's INFO lines (store migrations, experiment creation) drown the progress display;
    # MLflow resets its logger's level on import, so the environment is the reliable switch.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    STATE["debug"] = "--debug" in argv or os.environ.get("TLE_DEBUG") == "1"
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = 0
    try:
        result = app(args=argv, prog_name="tle", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except click.NoArgsIsHelpError as exc:
        exc.show()
        code = 2
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "tle"
        err.print(f"error: {exc.format_message()} (see '{cmd} --help')", highlight=False, soft_wrap=True)
        code = 2
    except UserError as exc:
        if STATE["debug"]:
            raise
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        code = 2
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted", highlight=False)
        code = 130
    except Exception as exc:
        if STATE["debug"]:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
                  highlight=False, markup=False, soft_wrap=True)
        code = 1
    sys.exit(code)
