"""``tle convert RUN --to BACKEND``: one run's model in another framework, checked logit for logit."""

from __future__ import annotations

from typing import Annotated

import typer

from tle.cli.app import STATE, Opt, TrackingUriOpt, app, err, out


@app.command()
def convert(
    run_id: Annotated[str, typer.Argument(help="run id (or runs:/ID) of the model to convert")],
    to: Annotated[str, Opt("--to", help="the backend to convert it to (keras, torch, ...)")],
    tracking_uri: TrackingUriOpt = None,
    as_json: Annotated[bool, Opt("--json", help="print the result as JSON")] = False,
) -> None:
    """Store a run's model as a new run of another backend: native weights, ONNX model, and the max |logit
    difference| against the source on its test images (above 1e-4 the command fails, exit 1)."""
    from tle.run.convert import TOLERANCE, convert_run, dumps
    from tle.store.stored_run import run_id_of
    from tle.store.tracking import configure

    mlflow = configure(tracking_uri)
    run_id = run_id_of(run_id)
    def started(source: str, model: str) -> None:
        if not STATE["quiet"] and not as_json:
            err.print(f"converting {source} run {run_id} ({model}) to {to}, each framework in a worker process of "
                      "its own", highlight=False)

    result = convert_run(run_id, to, mlflow.get_tracking_uri(), on_start=started)
    if as_json:
        print(dumps(result))
        return
    out.print(f"run {result['run_id']}: {result['backend']} {result['model']} from {result['source_backend']} run "
              f"{run_id}; max |logit diff| {result['max_abs_diff']:.2e} on {result['images']} test images "
              f"(≤ {TOLERANCE:g}), test_acc {result['test_acc']:.3f}, ONNX parity {result['onnx_max_abs_diff']:.1e}, "
              f"{result['seconds']:.1f} s", highlight=False)
