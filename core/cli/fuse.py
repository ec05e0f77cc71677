"""``tle fuse``: S2's knowledge fusion of finished runs, beside bagging and each run alone."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from tle.cli.app import STATE, JsonOpt, Opt, RunNameOpt, TrackingUriOpt, app, err, out


@app.command()
def fuse(
    runs: Annotated[list[str], typer.Argument(help="two or more finished run ids (RUN_A RUN_B ...)")],
    keep: Annotated[float, Opt(help="fraction of each run's head units kept per class")] = 0.5,
    ratio: Annotated[float, Opt(help="fraction of a unit's largest incoming weights that rank it (--rank weights, "
                                     "and the tie-break of activity)")] = 0.1,
    rank: Annotated[str, Opt(help="activity: rank each run's units by how often they decide on its own training "
                                  "images (spyketorch; torch and keras rank by weights); weights: S2's sum of the "
                                  "largest --ratio incoming weights")] = "activity",
    align: Annotated[str, Opt(help="index: S2's protocol, class k of every run shares output k and each task is "
                                   "scored on its own labels (the runs need as many classes); names: the union "
                                   "of the class names, every image against all of them")] = "index",
    normalise: Annotated[str, Opt(help="how the runs' scores are put on one scale before fusing and bagging: "
                                       "validation: one factor per run measured on the runs' validation images "
                                       "(the worst-served task keeps most of what its run knows); weights: from "
                                       "the weights alone (spyketorch: each net's mean conv3 synapse); none: S2's "
                                       "raw scores. torch and keras apply no factor")] = "validation",
    tracking_uri: TrackingUriOpt = None,
    experiment: Annotated[Optional[str], Opt(help="MLflow experiment of the new run (default: the first run's)")] = None,
    run_name: RunNameOpt = None,
    export: Annotated[Optional[bool], Opt("--export/--no-export",
                                          help="ONNX-export the fused model (default: as the first run did)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fuse runs into one model of the same size (S2); log it with bagging, the concatenation and each run alone."""
    from tle.progress import print_warning
    from tle.studies.fusion import BAGGING, CONCATENATION, FUSED, Destination, FusionRequest, run_fusion

    result = run_fusion([r.removeprefix("runs:/").strip("/") for r in runs],
                        FusionRequest(keep, ratio, align, normalise, rank, export),
                        Destination(tracking_uri, experiment, run_name, err, STATE["quiet"] or json_out))
    for line in result.warnings:
        print_warning(err, line)
    if json_out:
        print(json.dumps(result.as_dict()))
        return
    unapplied = " (not applied by this backend)" if result.calibration.get("applied") is False else ""
    scaled = ", scales " + " ".join(f"{s:.4g}" for s in result.scales) if any(s != 1 for s in result.scales) else ""
    table = Table(title=f"fusion run {result.run_id} (--align {align}, ranked by {result.ranked_by}, keep {keep:g}, "
                        f"ratio {ratio:g}, --normalise {result.normalise}{unapplied}{scaled}): "
                        "test accuracy")
    table.add_column("model")
    for task in result.tasks:
        table.add_column(task, justify="right")
    table.add_column("params", justify="right")
    baselines = [k for k in (BAGGING, CONCATENATION, FUSED) if k in result.accuracy]
    labels = [k for k in result.accuracy if k not in baselines]
    for label in labels + baselines:
        who = f"{label} ({result.parents[labels.index(label)][:8]})" if label in labels else label
        table.add_row(who, *[f"{v:.4f}" for v in result.accuracy[label]], f"{result.sizes[label]:,}")
    out.print(table)
