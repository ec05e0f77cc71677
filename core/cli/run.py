"""``tle run``: one experiment, or the continuation of an interrupted one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

from rich.table import Table

from tle.cli.app import STATE, JsonOpt, Opt, QuietOpt, RunNameOpt, TrackingUriOpt, app, err, out, parse_sets
from tle.errors import UserError
from tle.store.status import RunStatus



@app.command()
def run(
    config: Annotated[Optional[Path], Opt("--config", "-c", help="YAML or TOML experiment spec")] = None,
    backend: Annotated[Optional[str], Opt(help="backend name (see 'tle backends')")] = None,
    model: Annotated[Optional[str], Opt(help="model name (see 'tle models --backend B')")] = None,
    strategy: Annotated[Optional[str], Opt(help="scratch | feature-extractor | finetune:BLOCK | transfer:BLOCK|all | "
                                                "surgical:BLOCK | gradual[:BLOCK] | lp-ft")] = None,
    dataset: Annotated[Optional[str], Opt(help="digits[:0-4] | synthetic | folder:PATH | npz:PATH | mnist[:0-4] | emnist_letters[:a-j] ...")] = None,
    init: Annotated[Optional[str], Opt(help="initialiser for re-initialised blocks, e.g. glorot_uniform, normal:0.05")] = None,
    weights: Annotated[Optional[str], Opt(help="none | imagenet | PATH | runs:/RUN_ID | models:/NAME/VERSION")] = None,
    head: Annotated[Optional[str], Opt(help="dense | linear | original")] = None,
    epochs: Annotated[Optional[int], Opt(help="epochs of the first stage")] = None,
    batch_size: Annotated[Optional[int], Opt(help="batch size")] = None,
    lr: Annotated[Optional[float], Opt(help="learning rate of the first stage")] = None,
    optimizer: Annotated[Optional[str], Opt(help="adam | adamw | sgd")] = None,
    finetune_lr: Annotated[Optional[float], Opt(help="learning rate of the fine-tuning stage")] = None,
    finetune_epochs: Annotated[Optional[int], Opt(help="epochs of the fine-tuning stage")] = None,
    batchnorm: Annotated[Optional[str], Opt(help="frozen | train: BatchNorm statistics of pretrained blocks")] = None,
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
    nproc: Annotated[Optional[str], Opt(help="processes (torch DDP ranks) or replicas (keras devices) per node; auto = one per GPU")] = None,
    nnodes: Annotated[Optional[int], Opt(help="hosts taking part (torch; run the same command on each)")] = None,
    node_rank: Annotated[Optional[int], Opt(help="this host's index, 0..nnodes-1; node 0 tracks the run")] = None,
    master_addr: Annotated[Optional[str], Opt(help="address of node 0, where the ranks meet")] = None,
    master_port: Annotated[Optional[int], Opt(help="port on node 0 (default: a free one on one host, 29500 across hosts)")] = None,
    dist_backend: Annotated[Optional[str], Opt(help="auto | gloo | nccl: the collective backend of a distributed run")] = None,
    sync_batchnorm: Annotated[Optional[bool], Opt("--sync-batchnorm/--no-sync-batchnorm",
                                                  help="BatchNorm statistics over the global batch")] = None,
    join_timeout: Annotated[Optional[float], Opt(help="seconds the nodes may take to meet at --master-addr:--master-port (default 300)")] = None,
    collective_timeout: Annotated[Optional[float], Opt(help="seconds one collective may wait for a rank that hangs (default 1800)")] = None,
    experiment: Annotated[Optional[str], Opt(help="MLflow experiment name")] = None,
    tracking_uri: TrackingUriOpt = None,
    run_name: RunNameOpt = None,
    register: Annotated[Optional[str], Opt(help="register the ONNX model under this name")] = None,
    set_: Annotated[Optional[list[str]], Opt("--set", help="any spec field: --set train.weight_decay=1e-4")] = None,
    resume: Annotated[Optional[str], Opt(help="continue an interrupted run (KILLED/FAILED) in the same MLflow run")] = None,
    json_out: JsonOpt = False,
    debug: Annotated[bool, Opt("--debug", help="show tracebacks")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run one experiment and track it in MLflow."""
    from tle.contract.spec import build_spec, read_spec_file

    STATE["debug"] |= debug
    STATE["quiet"] |= quiet
    overrides = {
        "backend": backend, "model": model, "strategy": strategy, "dataset.source": dataset, "init": init,
        "weights": weights, "head.kind": head, "train.epochs": epochs, "train.batch_size": batch_size,
        "train.lr": lr, "train.optimizer": optimizer, "train.finetune_lr": finetune_lr,
        "train.finetune_epochs": finetune_epochs, "train.batchnorm": batchnorm, "train.seed": seed, "train.device": device,
        "train.precision": precision, "dataset.image_size": image_size, "dataset.channels": channels,
        "dataset.max_per_class": max_per_class, "train.early_stopping": early_stopping,
        "train.cache_features": cache_features, "export.onnx": export, "tracking.experiment": experiment,
        "tracking.uri": tracking_uri, "tracking.run_name": run_name, "tracking.registered_model": register,
        "train.distributed.nproc": int(nproc) if nproc is not None and nproc.strip().isdigit() else nproc,
        "train.distributed.nnodes": nnodes, "train.distributed.node_rank": node_rank,
        "train.distributed.master_addr": master_addr, "train.distributed.master_port": master_port,
        "train.distributed.backend": dist_backend, "train.distributed.sync_batchnorm": sync_batchnorm,
        "train.distributed.join_timeout": join_timeout, "train.distributed.collective_timeout": collective_timeout,
    }
    overrides.update(parse_sets(set_ or []))
    if resume:
        given = sorted(k for k, v in overrides.items() if v is not None and k != "tracking.uri")
        if given or config:
            raise UserError(f"--resume continues a run with its own spec; drop {', '.join(given) or '--config'}",
                            "start a new run to change settings")
        spec, result = _resume(resume, tracking_uri)
    else:
        spec = build_spec(read_spec_file(config) if config else {}, overrides)
        from tle.run.runner import RunOptions, run_experiment

        result = run_experiment(spec, RunOptions(console=err, quiet=STATE["quiet"]))
    if result is None:  # a node other than 0 of a distributed run: node 0 tracks and reports it
        if json_out:
            print(json.dumps({"node_rank": spec.train.distributed.node_rank, "status": RunStatus.FINISHED}))
        return
    spec = result.spec  # as run: with the backend's defaults filled in
    summary = {
        "run_id": result.run_id, "backend": spec.backend, "model": spec.model, "strategy": spec.strategy,
        "dataset": spec.dataset.source, "best_val_acc": result.best_val_acc, "test_acc": result.test.accuracy,
        "test_loss": result.test.loss, "epochs": len(result.history.records),
        "trainable_params": sum(c.trainable for c in result.counts[0]),
        "total_params": sum(c.total for c in result.counts[0]), "onnx_max_abs_diff": result.onnx_max_abs_diff,
        "wall_seconds": result.wall_seconds, "device": result.device,
        "world_size": result.world_size,
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
    """The resumed run's spec, and what :func:`tle.run.runner.run_experiment` returns for it."""
    import shutil
    import tempfile

    from tle.run.resume import load_resume
    from tle.run.runner import RunOptions, run_experiment

    workdir = Path(tempfile.mkdtemp(prefix="tle-resume-"))
    try:
        state = load_resume(run_id, tracking_uri, workdir)
        spec = state.spec
        if tracking_uri:
            spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": tracking_uri})})
        return spec, run_experiment(spec, RunOptions(console=err, quiet=STATE["quiet"], resume=state))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
