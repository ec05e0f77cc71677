"""``tle rank``: candidate backbones scored on a target dataset from frozen features, checked against a sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tle.cli.app import (STATE, ChannelsOpt, DeviceOpt, ImageSizeOpt, JsonOpt, Opt, TrackingUriOpt, app, err, out,
                         parse_sets)
from tle.errors import UserError

FORMATS = ("table", "markdown", "csv")


@app.command()
def rank(
    rank_file: Annotated[Optional[Path], typer.Argument(help="rank file: base (dataset, train, tracking), candidates "
                                                               "and/or axes, by, against")] = None,
    candidates: Annotated[Optional[list[str]], Opt("--candidates", help="BACKEND:MODEL@WEIGHTS, comma-separated; "
                                                   "WEIGHTS: random, imagenet, runs:/ID, models:/NAME/VERSION, a file")] = None,
    dataset: Annotated[Optional[str], Opt(help="target data, as tle run's --dataset")] = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    max_per_class: Annotated[Optional[int], Opt(help="rank on a sample: cap images per class (as tle run)")] = None,
    seed: Annotated[Optional[int], Opt(help="split seed (tle run's --seed: the same seed gives the same split)")] = None,
    batch_size: Annotated[Optional[int], Opt(help="images per forward pass of a backbone")] = None,
    device: DeviceOpt = None,
    by: Annotated[Optional[str], Opt(help="score that orders the table: knn | logme | hscore | hscore_shrunk | gbc | "
                                          "nce | leep | params | source_acc (default knn)")] = None,
    against: Annotated[Optional[str], Opt(help="name of a finished tle sweep in the same store: Kendall's tau of "
                                               "each score against its test accuracy, per strategy")] = None,
    jobs: Annotated[Optional[int], Opt("--jobs", "-j", help="worker processes extracting features at once (default: "
                                                           "one per backend, at most one per core)")] = None,
    fmt: Annotated[str, Opt("--format", help="table | markdown | csv")] = "table",
    json_out: JsonOpt = False,
    experiment: Annotated[Optional[str], Opt(help="MLflow experiment of the ranking's run")] = None,
    tracking_uri: TrackingUriOpt = None,
    run_name: Annotated[Optional[str], Opt(help="MLflow run name (default: 'rank: NAME')")] = None,
    set_: Annotated[Optional[list[str]], Opt("--set", help="a dataset/train field: --set dataset.val=0.3")] = None,
) -> None:
    """Rank candidate backbones for a target dataset from their frozen features, in seconds, before any training."""
    from tle.studies.rank import RankOptions, RankRequest, Ranker, check_by, parse_candidates, rank_spec

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}", f"choose one of {', '.join(FORMATS)} (or --json)")
    if by is not None:
        check_by(by)
    overrides = {"dataset.source": dataset, "dataset.image_size": image_size, "dataset.channels": channels,
                 "dataset.max_per_class": max_per_class, "train.seed": seed, "train.batch_size": batch_size,
                 "train.device": device, "tracking.experiment": experiment, "tracking.uri": tracking_uri,
                 "tracking.run_name": run_name}
    sets = parse_sets(set_ or [])
    for key in sets:
        if key.split(".")[0] not in ("dataset", "train", "tracking"):
            raise UserError(f"--set {key}: tle rank takes dataset.*, train.* and tracking.* fields",
                            "e.g. --set dataset.val=0.3")
    overrides.update(sets)
    request = RankRequest(candidates=tuple(parse_candidates(candidates or [])), overrides=overrides, by=by,
                          against=against)
    spec = rank_spec(request, rank_file)
    if jobs is None:
        from tle.workers.local import usable_cores

        jobs = max(1, min(usable_cores(), len({c.backend for c in spec.candidates})))
    ranker = Ranker(spec, RankOptions(tracking_uri=tracking_uri, jobs=jobs, console=err,
                                      quiet=STATE["quiet"] or json_out))
    ranking = ranker.run()  # the ranking's run has ended when this returns
    if json_out:
        print(json.dumps(ranking.as_dict(), default=str))
        return
    tables = [t for t in (ranking.table(), ranking.against_table()) if t is not None]
    for table in tables:
        if fmt == "table":
            out.print(table.rich())
            for note in table.notes:
                err.print(note, highlight=False, markup=False)
        else:
            print(table.markdown() if fmt == "markdown" else table.csv(), end="")
    err.print(f"ranked {len(ranking.results)} candidates in {ranking.wall_seconds:.1f}s (features "
              f"{ranking.extract_seconds:.1f}s); run {ranking.run_id} in experiment {ranking.experiment!r} at "
              f"{ranking.uri}", highlight=False, markup=False)
