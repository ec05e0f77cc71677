"""Continuing an interrupted run in the same MLflow run (``tle run --resume RUN_ID``).

Everything needed is in the store: the resolved spec (``spec.yaml``), the
epochs already logged (metric histories with their ``stage``), and the last
checkpoint the backend wrote (``checkpoint/`` artifact).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tle.errors import UserError
from tle.contract.loop import EPOCH_METRICS, EpochRecord, History
from tle.contract.spec import ExperimentSpec, build_spec
from tle.store.status import RunStatus
from tle.store.stored_run import FINGERPRINT_PARAM, SPEC_ARTIFACT, SPEC_KEY

CHECKPOINT_ARTIFACT = "checkpoint"
RESUMABLE = (RunStatus.KILLED, RunStatus.FAILED, RunStatus.RUNNING)


@dataclass
class Resume:
    run_id: str
    spec: ExperimentSpec
    history: History
    checkpoint: Path | None
    fingerprint: str | None = None  # of the data split the run started with
    spec_key: str | None = None  # the run's tle.spec_key: a resumed run stays the cell it was

    def done(self, stage: int) -> int:
        return sum(1 for r in self.history.records if r.stage == stage)


def load_resume(run_id: str, tracking_uri: str | None, workdir: Path) -> Resume:
    from tle.store.tracking import artifact_files, configure

    mlflow = configure(tracking_uri)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:
        raise UserError(f"run {run_id!r} not found in {mlflow.get_tracking_uri()}",
                        "check the id, or pass the --tracking-uri of the store that holds it") from None
    if run.info.status not in RESUMABLE:
        raise UserError(f"run {run_id} is {run.info.status}; only interrupted runs can be resumed",
                        "start a new run instead")
    try:
        spec = build_spec(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/{SPEC_ARTIFACT}")))
    except UserError:
        raise
    except Exception:
        raise UserError(f"run {run_id} has no {SPEC_ARTIFACT}", "it was not made by tle run; start a new run") from None
    checkpoint = artifact_files(run_id, CHECKPOINT_ARTIFACT, workdir)
    return Resume(run_id, spec, _history(client, run_id), checkpoint[0] if checkpoint else None,
                  run.data.params.get(FINGERPRINT_PARAM), run.data.tags.get(SPEC_KEY))


def _history(client, run_id: str) -> History:
    by_step: dict[int, dict[str, float]] = {}
    for metric in (*EPOCH_METRICS, "epoch_seconds", "stage"):
        for m in client.get_metric_history(run_id, metric):
            by_step.setdefault(m.step, {})[metric] = m.value
    history = History()
    per_stage: dict[int, int] = {}
    for step in sorted(by_step):
        values = by_step[step]
        stage = int(values.pop("stage", 0))
        epoch = per_stage.get(stage, 0)
        per_stage[stage] = epoch + 1
        history.records.append(EpochRecord(step, stage, "", epoch, values))
    return history

