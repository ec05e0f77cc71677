"""Studies: many runs read together (sweeps, comparisons, the init study, fusion).

This layer sits above :func:`tle.run.runner.run_experiment`: it builds cell specs,
hands them to an executor and reads the results back from the MLflow store. It
never reaches into a backend, and backends never know they are in a study.
"""
