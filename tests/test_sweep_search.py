"""``tle sweep`` with a ``search:`` section, end to end on real worker processes, a real MLflow store and a real Optuna
journal: trials are nested runs, the pruner stops a trial worse than the median at its epoch (FINISHED, tagged
``tle.pruned``), two workers write one study, confirm re-runs the best configurations over seeds, SIGTERM and a
second run continue the study without losing or repeating a trial, and bad input is one line and exit 2 before the
parent run exists. The numpy example backend keeps each trial about a second."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import yaml

from conftest import runs_in, tle, tle_inprocess
from tle.store.tracking import deferred_signals

pytestmark = pytest.mark.slow

BASE = {"backend": "numpy", "model": "mlp", "dataset": {"source": "digits:5-9", "train": 30},
        "train": {"epochs": 6, "batch_size": 16}, "export": {"onnx": False}}


def sweep_file(tmp_path, name, search, base=None, **extra):
    path = tmp_path / f"{name}.yaml"
    body = {"name": name, "base": {**BASE, **(base or {}), "tracking": {"experiment": name}}, "search": search, **extra}
    path.write_text(yaml.safe_dump(body))
    return path


def study_of(journal):
    """The one study in the journal file (Optuna's own reader)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.mark.parametrize("search, said", [
    ({"space": {"train.lr": {"logg": [1e-5, 1e-2]}}}, "unknown distribution logg"),
    ({"space": {"train.lr": {"log": [1e-2, 1e-5]}}}, "is empty"),
    ({"space": {"train.lr": {"float": [0.0, 0.1]}}}, "search.space.train.lr = 0.0"),
    ({"metric": "test_acc", "space": {"train.lr": {"log": [1e-5, 1e-2]}}}, "not a metric every cell logs per epoch"),
    ({"space": {"train.lrr": {"log": [1e-5, 1e-2]}}}, "'train.lrr' is not a spec field"),
    ({"sampler": "grid", "space": {"train.lr": {"log": [1e-5, 1e-2]}}}, "sampler grid needs a list of values"),
    ({"sampler": {"tpe": {"n_startup": 3}}, "space": {"train.lr": {"log": [1e-5, 1e-2]}}}, "search.sampler tpe:"),
])
def test_bad_search_input_is_one_line_and_exit_2_before_the_parent_run(tmp_path, search, said):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = tle_inprocess("--quiet", "sweep", sweep_file(tmp_path, "bad", search), "--tracking-uri", uri, check_rc=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and said in lines[0], lines
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "m.optuna.journal").exists()  # no store, no run


def test_a_study_another_sweep_runs_is_refused_before_the_parent_run(tmp_path, store):
    from filelock import FileLock

    from tle.store.lock import sqlite_path

    uri, db = store, sqlite_path(store)  # the session's store (migrated once); its studies' journal is beside it
    with FileLock(str(db.parent / f"{db.stem}.optuna.journal.sweep.lock")):
        proc = tle_inprocess("--quiet", "sweep", sweep_file(tmp_path, "busy", {"space": {"train.lr": {"log": [1e-4, 1e-2]}}}),
                             "--tracking-uri", uri, check_rc=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another tle sweep is running the studies in" in lines[0], lines
    assert runs_in(uri, "busy") == []


def test_a_search_on_two_workers_prunes_confirms_and_reads_like_a_grid(tmp_path):
    """8 trials of lr × batch size on two workers; the first four configurations are given (enqueue), the third is lr
    1e-5, which cannot learn in a few epochs: the median pruner (after one complete trial) stops it at its third."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    search = {"metric": "val_acc", "trials": 8, "sampler": "tpe", "seed": 1,
              "pruner": {"median": {"n_startup_trials": 1, "n_warmup_steps": 2}},
              "space": {"train.lr": {"log": [1.0e-5, 0.05]}, "train.batch_size": {"choice": [8, 16]}},
              "enqueue": [{"train.lr": 3.0e-3, "train.batch_size": 16}, {"train.lr": 1.0e-2, "train.batch_size": 8},
                          {"train.lr": 1.0e-5, "train.batch_size": 16}, {"train.lr": 5.0e-3, "train.batch_size": 8}],
              "confirm": {"seeds": [0, 1], "top": 2, "against": "base"}}
    proc = tle("--quiet", "sweep", sweep_file(tmp_path, "two", search), "--tracking-uri", uri, "--jobs", "2",
               "--format", "json", check_rc=0)
    answer = json.loads(proc.stdout)
    (study_answer,) = answer["studies"]
    study = study_of(tmp_path / "m.optuna.journal")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8 and study_answer["counts"]["COMPLETE"] + study_answer["counts"]["PRUNED"] == 8
    runs = runs_in(uri, "two")
    parent = next(r for r in runs if r.data.tags.get("tle.role") == "sweep")
    assert parent.info.status == "FINISHED"
    trial_runs = {int(r.data.tags["tle.trial"]): r for r in runs if r.data.tags.get("tle.role") == "trial"}
    assert sorted(trial_runs) == list(range(8))
    for t in trials:  # each trial is a nested run with its sampled values as params and tags
        run = trial_runs[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert t.user_attrs["tle.run_id"] == run.info.run_id
        for key, value in t.params.items():
            assert run.data.params[key] == str(value) and run.data.tags[f"search.{key}"] == str(value)
    # Two workers wrote the one study.
    assert len({r.data.tags["tle.worker"] for r in trial_runs.values()}) == 2
    # Pruning: lr 1e-5 was stopped after its first epoch, worse than the median of the trials complete by then.
    slow = trials[2]
    assert slow.params["train.lr"] == 1.0e-5 and slow.state.name == "PRUNED"
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    for t in pruned:
        run = trial_runs[t.number]
        step = t.last_step
        assert run.data.tags["tle.pruned"].startswith(f"after epoch {step + 1} of stage 0")
        assert run.data.metrics["epochs_trained"] == step + 1 < 6
        before = [o.intermediate_values[step] for o in trials if o.state.name == "COMPLETE"
                  and o.datetime_complete < t.datetime_complete and step in o.intermediate_values]
        assert before and max(t.intermediate_values.values()) < statistics.median(before), (t.number, before)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    for t in complete:
        assert trial_runs[t.number].data.metrics["epochs_trained"] == 6
        assert t.value == pytest.approx(trial_runs[t.number].data.metrics["best_val_acc"])
    # Confirm: the two best configurations and the base spec over seeds 0 and 1, mean ± sd of their test_acc.
    best = sorted(complete, key=lambda t: (-t.value, t.number))[:2]
    confirm = {c["config"]: c for c in study_answer["confirm"]}
    assert set(confirm) == {f"#1 (trial {best[0].number})", f"#2 (trial {best[1].number})", "base"}
    by_id = {r.info.run_id: r for r in runs}
    for config, trial in zip(sorted(c for c in confirm if c.startswith("#")), best):
        group = confirm[config]
        assert group["n"] == 2
        seeds = sorted(int(by_id[i].data.params["train.seed"]) for i in group["run_ids"])
        assert seeds == [0, 1]
        assert {float(by_id[i].data.params["train.lr"]) for i in group["run_ids"]} == {trial.params["train.lr"]}
        accs = [by_id[i].data.metrics["test_acc"] for i in group["run_ids"]]
        assert group["test_acc_mean"] == pytest.approx(statistics.mean(accs))
        assert group["test_acc_sd"] == pytest.approx(statistics.stdev(accs))
        base = [by_id[i].data.metrics["test_acc"] for i in confirm["base"]["run_ids"]]
        assert group["beyond_seed_spread"] == (abs(statistics.mean(accs) - statistics.mean(base))
                                               > statistics.stdev(accs) + statistics.stdev(base))
    # The trial itself (seed 0, fully trained) is the confirm run of seed 0: reused, not trained again.
    assert trial_runs[best[0].number].info.run_id in confirm[f"#1 (trial {best[0].number})"]["run_ids"]
    assert set(study_answer["importances"]) == {"train.lr", "train.batch_size"}
    import mlflow

    client = mlflow.MlflowClient(uri)
    plots = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(parent.info.run_id, "plots/search/all")}
    assert {"history.png", "importances.png", "slice.png", "contour.png"} <= plots
    # tle compare reads the search as it reads a grid: one row per configuration, the pruned trials left out.
    table = json.loads(tle_inprocess("compare", "--sweep", "two", "--tracking-uri", uri, "--format", "json",
                                     check_rc=0).stdout)
    assert sum(c["n"] for c in table["cells"]) == len(runs) - 1 - len(pruned)  # every child run but the pruned
    assert all(c["n"] == 2 for c in table["cells"] if c.get("train.lr") in
               {str(best[0].params["train.lr"]), str(best[1].params["train.lr"])})


def test_a_sigterm_inside_deferred_signals_reaches_its_handler_when_the_block_ends():
    """The scheduler reads a worker's outcome and tells the study inside ``deferred_signals``: a SIGTERM then
    interrupts after the trial is told, never between the read and the tell (a finished trial lost, its idle
    worker then counted as interrupted: once seen under load in the test below)."""
    steps = []

    def interrupt(signum, frame):
        steps.append("handler")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the signal has arrived: held, not raised here
            steps.append("block ended")
        assert steps == ["block ended", "handler"]
        assert signal.getsignal(signal.SIGTERM) is interrupt  # the handler it started with is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_mid_trial_then_rerun_continues_the_study_without_losing_or_repeating_a_trial(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    path = sweep_file(tmp_path, "resume", {"trials": 3, "sampler": "random", "space": {"train.lr": {"log": [1e-3, 3e-2]}}},
                      base={"train": {"epochs": 40, "batch_size": 4}})
    journal = tmp_path / "m.optuna.journal"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    sweep = subprocess.Popen([sys.executable, "-m", "tle", "--quiet", "sweep", str(path), "--jobs", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        states = []
        while time.monotonic() < deadline and sweep.poll() is None:
            time.sleep(0.5)
            if not journal.exists():
                continue
            trials = study_of(journal).get_trials(deepcopy=False)
            states = [t.state.name for t in trials]
            # Mid-trial: a quarter of its epochs or more still to run, so that it cannot finish before the signal
            # lands, however slowly this loop goes on a busy machine (it did at 20 epochs, breaking at any epoch).
            if states[:1] == ["COMPLETE"] and states[1:] == ["RUNNING"] and 0 < len(trials[1].intermediate_values) <= 30:
                break
        assert sweep.poll() is None and states == ["COMPLETE", "RUNNING"], (states, sweep.poll())
        sweep.send_signal(signal.SIGTERM)
        _, err = sweep.communicate(timeout=90)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 130, err
    study = study_of(journal)
    first, left = study.get_trials(deepcopy=False)[:2]
    assert left.state.name == "FAIL" and left.user_attrs["tle.interrupted"] is True
    (waiting,) = [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    killed = [r for r in runs_in(uri, "resume") if r.info.status == "KILLED" and r.data.tags.get("tle.role") == "trial"]
    assert [r.data.tags["tle.trial"] for r in killed] == [str(left.number)]

    tle("--quiet", "sweep", path, "--jobs", "1", env={"MLFLOW_TRACKING_URI": uri}, check_rc=0)
    trials = study_of(journal).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == 3 and len({t.params["train.lr"] for t in done}) == 3  # none lost, none repeated
    assert done[0].number == first.number  # the trial finished before the signal stays; it did not run again
    rerun = next(t for t in done if t.user_attrs.get("tle.rerun_of") == left.number)  # the interrupted one, again
    assert rerun.params == left.params and rerun.number == waiting.number
    runs = runs_in(uri, "resume")
    finished = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("tle.role") == "trial"]
    assert sorted(int(r.data.tags["tle.trial"]) for r in finished) == sorted(t.number for t in done)
    assert next(r for r in finished if r.data.tags["tle.trial"] == str(rerun.number)).data.tags["tle.trial.rerun_of"] \
        == str(left.number)
    parents = [r for r in runs if r.data.tags.get("tle.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same parent run, reopened
    assert not [r for r in runs if r.info.status == "RUNNING"]
