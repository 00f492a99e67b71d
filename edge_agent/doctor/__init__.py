"""`edge-agent doctor`: what a new board gets wrong, one line per check with the fix.

Read-only and unprivileged: it reads files (under --root), asks the kernel, and tries the things
that can crash or hang (a runtime with libedgetpu, a camera's open, imports) in a child process
with a timeout. It changes nothing. Exit status 0 when everything the config needs works, 1
otherwise; 2 for bad arguments (a --root that does not exist).

One module per area: system, packages, edgetpu, cameras, service_user, storage, broker, clock,
pi_health; each returns a list of result.Check.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from edge_agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from edge_agent.doctor.context import DEFAULT_TIMEOUT_S, SERVICE_USER, DoctorContext
from edge_agent.doctor.result import FAIL, Check, fail, info, ok
from edge_agent.errors import InputError

logger = logging.getLogger(__name__)

STATUS_LABELS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "info": "info", "skip": "skip"}


class DoctorError(InputError):
    """The doctor cannot start: its arguments are wrong."""


def make_context(root: str | Path = "/", config_path: str | Path | None = None, service_user: str = SERVICE_USER,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[DoctorContext, list[Check]]:
    """The context the checks read from, and the config check's own findings.

    A config that cannot be read or parsed is reported (a failure) and the rest is checked as
    without one. Without --config the board's default, /etc/edge-agent/agent.toml under the
    root, is used when it exists."""
    root = Path(root)
    if not root.is_dir():
        raise DoctorError(f"--root {root} does not exist or is not a directory: give the folder that holds the board's "
                          "/sys, /proc, /dev and /etc (\"/\" on the board itself)")
    if timeout_s <= 0:
        raise DoctorError(f"--timeout-s must be more than 0, got {timeout_s:g}")
    root = root.resolve()
    base = DoctorContext(root=root, service_user=service_user, timeout_s=timeout_s)
    given = config_path is not None
    path = Path(config_path) if given else base.path(DEFAULT_CONFIG_PATH)
    if not given and not path.exists():
        return base, [info("config", "config", f"no config at {path}: checking the board without one (--config FILE)")]
    try:
        config = load_config(path)
    except ConfigError as err:
        problems = "; ".join(err.problems)
        fix = ("run as the service user or root: sudo -u edge-agent edge-agent doctor" if "cannot be read" in problems
               else f"edge-agent check-config {path} lists every problem")
        return DoctorContext(root=root, config_path=path, service_user=service_user, timeout_s=timeout_s), [
            fail("config", "config", f"{path}: {problems} (the other checks run as without a config)", fix)]
    ctx = DoctorContext(root=root, config=config, config_path=path, service_user=service_user, timeout_s=timeout_s)
    checks = [ok("config", "config", f"{path}: {len(config.pipelines)} pipeline(s), device {config.device_id}")]
    for pipeline in config.pipelines:
        model = ctx.path(pipeline.model)
        if not model.is_file():
            checks.append(fail("config", f"model-{pipeline.name}", f"pipeline {pipeline.name}: the model {pipeline.model} "
                                                                   "does not exist", "copy the model there, or fix the path"))
    return ctx, checks


def areas() -> list[tuple[str, Callable[[DoctorContext], list[Check]]]]:
    from edge_agent.doctor.broker import check_broker
    from edge_agent.doctor.cameras import check_cameras
    from edge_agent.doctor.clock import check_clock
    from edge_agent.doctor.edgetpu import check_edgetpu
    from edge_agent.doctor.packages import check_packages
    from edge_agent.doctor.pi_health import check_pi_health
    from edge_agent.doctor.service_user import check_service_user
    from edge_agent.doctor.storage import check_storage
    from edge_agent.doctor.system import check_system

    return [("system", check_system), ("packages", check_packages), ("edgetpu", check_edgetpu),
            ("cameras", check_cameras), ("service-user", check_service_user), ("storage", check_storage),
            ("broker", check_broker), ("clock", check_clock), ("pi-health", check_pi_health)]


def run_checks(ctx: DoctorContext, only: set[str] | None = None) -> list[Check]:
    """Every area's checks; an area that breaks is reported as a failed check, the others still run."""
    checks = []
    for name, check in areas():
        if only and name not in only:
            continue
        try:
            checks.extend(check(ctx))
        except Exception as err:  # a bug in one area must not hide the others' answers
            logger.debug("doctor area %s failed", name, exc_info=True)
            checks.append(fail(name, "doctor", f"the {name} check itself failed: {type(err).__name__}: {err}",
                               "a bug in edge-agent doctor: please report it with this line"))
    return checks


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


def format_text(checks: list[Check]) -> str:
    """One line per check: status, area/name, what was found, and the fix when there is one."""
    lines = []
    for check in checks:
        line = f"{STATUS_LABELS[check.status]:<5} {check.area + '/' + check.name:<24} {check.summary}"
        if check.fix:
            line += f" -> fix: {check.fix}"
        lines.append(line)
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines.append(f"{failed} failure(s), {warned} warning(s): " + ("everything the config needs works" if not failed
                                                                    else "fix the FAIL lines above"))
    return "\n".join(lines)


def to_json(ctx: DoctorContext, checks: list[Check]) -> dict:
    return {"ok": exit_status(checks) == 0, "root": str(ctx.root),
            "config": str(ctx.config_path) if ctx.config_path else None,
            "service_user": ctx.service_user, "checks": [c.describe() for c in checks]}


__all__ = ["Check", "DoctorContext", "DoctorError", "exit_status", "format_text", "make_context", "run_checks", "to_json"]
