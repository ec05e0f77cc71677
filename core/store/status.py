"""The status of a run, as MLflow names it; the one place tle spells them."""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    """A str, so it compares equal to MLflow's strings and travels in JSON (worker outcomes) as the plain name."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    PENDING = "PENDING"  # a sweep cell that never started (not an MLflow status)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


ENDED = (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)
ERROR_TAG = "tle.error"  # why a run (a cell, a sweep) ended FAILED or KILLED, in one line
WARNING_TAG = "tle.warning"  # what a FINISHED run found that the user must see, one finding per line
# A run its owner stopped early (a search's pruner): FINISHED with the epochs it trained, not a result of the full spec
PRUNED_TAG = "tle.pruned"


def warning_tags(findings: list[str]) -> dict[str, str]:
    """The tag that holds every warning of a run, one per line (within MLflow's 5,000 characters of a tag)."""
    return {WARNING_TAG: "\n".join(findings)[:5000]}
