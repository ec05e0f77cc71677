"""One experiment: the runner (:mod:`tle.run.runner`) and what it is made of: assembly, weights resolution,
resume, outputs (export and parity), the distributed launcher, metrics and plots; plus the operations on a
stored run that make a new one (rebuild, export, convert)."""
