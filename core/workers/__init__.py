"""Processes that do work for a run or a study: warm local worker processes (:mod:`tle.workers.local`), Ray
(:mod:`tle.workers.ray`), the scheduler (:mod:`tle.workers.schedule`) and one task in a worker of another backend
(:mod:`tle.workers.task`).

The pools start processes and exchange JSON tasks with them; what a worker does with a task is decided in
the worker process (:mod:`tle.run.worker`), so nothing here imports the run, the studies or a framework.
"""
