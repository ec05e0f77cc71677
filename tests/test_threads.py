"""A run, a sweep worker and a DDP rank wait for their threads without spinning (``tle.contract.threads``), and a user's
own setting wins. Untimed: what is checked is the environment each gets and what OpenMP read from it
(benchmarks/shared_machine.py measures what it is for)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tle.backends.manager import load_backend
from tle.workers.local import LocalPool, thread_env
from tle.contract.threads import WAIT_DEFAULTS, WAIT_VARS, wait_env


@pytest.fixture
def unset(monkeypatch):
    """No wait setting of the user's (nor one a tle import put into this test process)."""
    for var in WAIT_VARS:
        monkeypatch.setenv(var, "")  # so that teardown restores the test process's own state, unset or not
        monkeypatch.delenv(var)
    return monkeypatch


def _clean_env(**user: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
    return {**env, **user}


def test_tle_sets_passive_waiting_unless_the_user_chose():
    assert wait_env({}) == WAIT_DEFAULTS == {"OMP_WAIT_POLICY": "PASSIVE"}
    for var, value in (("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000"), ("KMP_BLOCKTIME", "200")):
        assert wait_env({var: value}) == {}, var  # any of them: the user has chosen, tle adds nothing


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_sweep_worker_gets_the_wait_policy(unset, tmp_path, jobs):
    assert thread_env(jobs)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert LocalPool(jobs, log_dir=tmp_path).env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_a_sweep_workers_user_setting_wins(unset, tmp_path):
    unset.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in thread_env(2)
    assert LocalPool(2, log_dir=tmp_path).env["OMP_WAIT_POLICY"] == "ACTIVE"
    unset.delenv("OMP_WAIT_POLICY")
    unset.setenv("GOMP_SPINCOUNT", "300000")
    env = LocalPool(1, log_dir=tmp_path).env
    assert env["GOMP_SPINCOUNT"] == "300000" and "OMP_WAIT_POLICY" not in env


def test_a_run_loads_its_backend_with_the_wait_policy(unset):
    # What `tle run` (and a sweep worker, and the DDP launcher) does before any framework import: load the backend.
    load_backend("torch")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    unset.setenv("OMP_WAIT_POLICY", "ACTIVE")
    load_backend("torch")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    unset.delenv("OMP_WAIT_POLICY")
    unset.setenv("GOMP_SPINCOUNT", "9")
    load_backend("torch")
    assert "OMP_WAIT_POLICY" not in os.environ


def _openmp_read(env: dict[str, str]) -> dict[str, str]:
    """What libgomp read when torch loaded through the torch backend (any of its modules: ``tle_torch.device``
    imports torch at its top), and what a child of that process gets (DDP ranks inherit the launcher's environment,
    the launcher's forkserver included)."""
    code = ("import os, subprocess, sys\nimport tle_torch.device\n"
            "print('child', subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"OMP_WAIT_POLICY\"))'],"
            " capture_output=True, text=True).stdout.strip())")
    proc = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_DISPLAY_ENV": "VERBOSE"},
                          capture_output=True, text=True, check=True, timeout=300)
    seen = {}
    for line in proc.stderr.splitlines() + proc.stdout.splitlines():
        key, _, value = line.strip().partition(" = ")
        if key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            seen[key] = value.strip("'")
        elif line.startswith("child "):
            seen["child"] = line.split()[1]
    return seen


def test_torch_loads_openmp_passive_and_ranks_inherit_it():
    seen = _openmp_read(_clean_env())
    assert seen == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "child": "PASSIVE"}


def test_torch_loads_openmp_with_the_users_setting():
    seen = _openmp_read(_clean_env(OMP_WAIT_POLICY="ACTIVE"))
    assert seen["OMP_WAIT_POLICY"] == "ACTIVE" and seen["child"] == "ACTIVE"
