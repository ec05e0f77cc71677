"""The MLflow store: tracking a run (:mod:`tle.store.tracking`), the store lock (:mod:`tle.store.lock`), a stored
run read back once (:mod:`tle.store.stored_run`) and the statuses and tag names runs are read by
(:mod:`tle.store.status`)."""

import os

# tle shows its own progress (rich) and one-line errors: MLflow's tqdm bars for artifact downloads would print
# between them whenever a stored run is read back (a user who wants them sets the variable to true).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
