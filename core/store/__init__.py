"""The MLflow store: tracking a run (:mod:`tle.store.tracking`), the store lock (:mod:`tle.store.lock`), a stored
run read back once (:mod:`tle.store.stored_run`) and the statuses and tag names runs are read by
(:mod:`tle.store.status`)."""
