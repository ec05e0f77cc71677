"""Continuing an interrupted run in the same MLflow run (``tle run --resume RUN_ID``).

Everything needed is in the store: the resolved spec (``spec.yaml``), the
epochs already logged (metric histories with their ``stage``), and the last
checkpoint the backend wrote (``checkpoint/`` artifact).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tle.contract.loop import EPOCH_METRICS, EpochRecord, History
from tle.contract.spec import ExperimentSpec
from tle.store.status import RunStatus
from tle.store.stored_run import SPEC_KEY, StoredRun

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
    from tle.store.tracking import configure

    configure(tracking_uri)
    stored = StoredRun(run_id, workdir=workdir, doing="resume")
    stored.require(*RESUMABLE, fix="only interrupted runs can be resumed; start a new run instead")
    checkpoint = stored.artifact(CHECKPOINT_ARTIFACT)
    return Resume(run_id, stored.spec(), _history(stored.client, run_id), checkpoint[0] if checkpoint else None,
                  stored.fingerprint, stored.tags.get(SPEC_KEY))


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

