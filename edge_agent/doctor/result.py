"""What one check found: a status, one line that says it, and the fix when something is wrong."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK = "ok"
WARN = "warn"  # works, or is not needed by the config, but worth fixing
FAIL = "fail"  # something the config needs does not work: doctor exits 1
INFO = "info"  # a fact (versions, what was found)
SKIP = "skip"  # not checked here, and why
STATUSES = (OK, WARN, FAIL, INFO, SKIP)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report. `fix` says what to do; empty when there is nothing to do."""

    area: str
    name: str
    status: str
    summary: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}")

    def describe(self) -> dict[str, Any]:
        return {"area": self.area, "name": self.name, "status": self.status, "summary": self.summary,
                "fix": self.fix, "details": self.details}


def ok(area: str, name: str, summary: str, **details: Any) -> Check:
    return Check(area, name, OK, summary, "", details)


def info(area: str, name: str, summary: str, **details: Any) -> Check:
    return Check(area, name, INFO, summary, "", details)


def skip(area: str, name: str, summary: str, **details: Any) -> Check:
    return Check(area, name, SKIP, summary, "", details)


def problem(area: str, name: str, needed: bool, summary: str, fix: str, **details: Any) -> Check:
    """A failure when the config needs the thing, else a warning."""
    return Check(area, name, FAIL if needed else WARN, summary, fix, details)


def warn(area: str, name: str, summary: str, fix: str, **details: Any) -> Check:
    return Check(area, name, WARN, summary, fix, details)


def fail(area: str, name: str, summary: str, fix: str, **details: Any) -> Check:
    return Check(area, name, FAIL, summary, fix, details)
