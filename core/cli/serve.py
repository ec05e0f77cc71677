"""Trained models: ``tle export`` and ``tle predict`` (ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tle.cli.app import Opt, app, out, output_file
from tle.errors import UserError
from tle.store.status import RunStatus


def _onnx_from(ref: str, tracking_uri: str | None, dst: Path) -> Path:
    """An ONNX file for a path, a run id or runs:/ID."""
    path = Path(ref)
    if path.suffix == ".onnx" or path.exists():
        if not path.is_file():
            raise UserError(f"ONNX model {ref} does not exist", "give a .onnx file or a run id")
        return path
    from tle.store.tracking import artifact_files, configure

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


def _run_onnx(ref: str, tracking_uri: str | None, dst: Path) -> Path:
    """:func:`_onnx_from`, and for a finished run trained without export (``--no-export``, a sweep's cell that was
    not the best of its group) first the ONNX model built from its logged weights in a worker of its backend,
    with the parity check, logged to that run."""
    path = Path(ref)
    if path.suffix == ".onnx" or path.exists():
        return _onnx_from(ref, tracking_uri, dst)
    from tle.store.stored_run import BACKEND_TAG, WEIGHTS_ARTIFACT
    from tle.store.tracking import artifact_files, configure

    mlflow = configure(tracking_uri)
    run_id = ref[len("runs:/"):].strip("/").split("/")[0] if ref.startswith("runs:/") else ref
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:
        return _onnx_from(ref, tracking_uri, dst)  # not a run: the usual one-line error
    found = [f for f in artifact_files(run_id, "model", dst) or [] if f.suffix == ".onnx"]
    if found:
        return found[0]
    if artifact_files(run_id, WEIGHTS_ARTIFACT, dst / WEIGHTS_ARTIFACT) is None:
        raise UserError(f"run {run_id} has neither an ONNX model nor weights to build one from",
                        "run it again with --export")
    if run.info.status != RunStatus.FINISHED:
        raise UserError(f"run {run_id} ended {run.info.status} without an ONNX model",
                        f"resume it (tle run --resume {run_id}) or run it again")
    from tle.cli.app import err
    from tle.run.export import export_in_worker

    backend = run.data.tags.get(BACKEND_TAG) or run.data.params.get("backend", "")
    err.print(f"run {run_id} has no ONNX model: building it from its weights in a {backend} worker", highlight=False)
    diff = export_in_worker(run_id, backend, mlflow.get_tracking_uri())
    err.print(f"exported with parity max |diff| {diff:.1e}; logged to run {run_id}", highlight=False)
    return _onnx_from(ref, tracking_uri, dst)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="run id (or runs:/ID)")],
    output: Annotated[Optional[Path], Opt("--output", "-o", help="where to write the .onnx file")] = None,
    tracking_uri: Annotated[Optional[str], Opt(help="MLflow tracking URI")] = None,
) -> None:
    """Write a run's ONNX model to a file."""
    import shutil
    import tempfile

    from tle.interop.serving import open_model

    target = output_file(output or Path(f"{run_id.split('/')[-1][:12]}.onnx"), "-o/--output")
    with tempfile.TemporaryDirectory() as tmp:
        src = _run_onnx(run_id if run_id.startswith("runs:/") else f"runs:/{run_id}", tracking_uri, Path(tmp))
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
    from tle.interop.serving import open_model, softmax

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
        onnx_model = open_model(_run_onnx(model, tracking_uri, Path(tmp)), prefer_gpu=not cpu)
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
