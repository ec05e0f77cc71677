"""Trained models: ``tle export`` and ``tle predict`` (ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from tle.cli.app import JsonOpt, Opt, TrackingUriOpt, app, out, output_file
from tle.errors import UserError
from tle.store.status import RunStatus


def _onnx_file(ref: str) -> Path | None:
    """``ref`` as an ONNX file path, or None when it names a run (an id or runs:/ID)."""
    path = Path(ref)
    if path.suffix == ".onnx" or path.exists():
        if not path.is_file():
            raise UserError(f"ONNX model {ref} does not exist", "give a .onnx file or a run id")
        return path
    return None


def _run_onnx(ref: str, tracking_uri: str | None, dst: Path) -> Path:
    """An ONNX file for a path, a run id or runs:/ID. A finished run trained without export (``--no-export``, a
    sweep's cell that was not the best of its group, a fused run) first gets the ONNX model built from its logged
    weights in a worker of its backend, with the parity check, logged to that run."""
    path = _onnx_file(ref)
    if path is not None:
        return path
    from tle.store.stored_run import WEIGHTS_ARTIFACT, StoredRun
    from tle.store.tracking import configure

    mlflow = configure(tracking_uri)
    try:
        stored = StoredRun(ref, workdir=dst / "stored", doing="export")
    except UserError:
        raise UserError(f"{ref!r} is neither an ONNX file nor a run in {mlflow.get_tracking_uri()}",
                        "give a .onnx path or a run id from 'tle compare' / the MLflow UI") from None
    found = stored.onnx_model()
    if found is not None:
        return found
    if stored.artifact(WEIGHTS_ARTIFACT) is None:
        raise UserError(f"run {stored.run_id} has neither an ONNX model nor weights to build one from",
                        "run it again with --export")
    stored.require(RunStatus.FINISHED, fix=f"it has no ONNX model: resume it (tle run --resume {stored.run_id}) "
                                           "or run it again")
    stored.check_rebuilds()
    from tle.cli.app import err
    from tle.run.export import export_in_worker

    err.print(f"run {stored.run_id} has no ONNX model: building it from its weights in a {stored.backend} worker",
              highlight=False)
    diff = export_in_worker(stored.run_id, stored.backend or "", mlflow.get_tracking_uri())
    err.print(f"exported with parity max |diff| {diff:.1e}; logged to run {stored.run_id}", highlight=False)
    found = StoredRun(stored.run_id, workdir=dst / "exported").onnx_model()
    if found is None:
        raise RuntimeError(f"run {stored.run_id} was exported but holds no ONNX model")
    return found


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="run id (or runs:/ID)")],
    output: Annotated[Optional[Path], Opt("--output", "-o", help="where to write the .onnx file")] = None,
    tracking_uri: TrackingUriOpt = None,
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
    json_out: JsonOpt = False,
    tracking_uri: TrackingUriOpt = None,
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
