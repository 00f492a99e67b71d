"""Free space where the agent keeps its spool and model store, against what the config lets them use."""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.config import DEFAULT_STATE_DIR
from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.result import Check, ok, problem, skip

AREA = "storage"
MB = 1024 * 1024
MODEL_COPIES = 2  # a pushed bundle is received whole, then unpacked beside the active model


def existing_parent(path: Path) -> Path:
    """`path`, or its nearest existing parent (the state dir is made at the service's first start)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_storage(ctx: DoctorContext) -> list[Check]:
    state_dir = Path(ctx.config.state_dir) if ctx.config else DEFAULT_STATE_DIR
    where = ctx.path(state_dir)
    probe = existing_parent(where)
    try:
        stats = os.statvfs(probe)
    except OSError as err:
        return [skip(AREA, "free-space", f"cannot read the free space of {probe}: {err.strerror}")]
    free_mb = stats.f_bavail * stats.f_frsize / MB
    details = {"state_dir": str(state_dir), "measured_at": str(probe), "free_mb": round(free_mb, 1)}
    if ctx.config is None:
        return [ok(AREA, "free-space", f"{free_mb:,.0f} MB free for {state_dir} (no config: nothing to compare with)", **details)]
    spool_mb = ctx.config.spool.max_mb if ctx.config.spool.enabled and ctx.needs_mqtt() else 0.0
    models_mb = ctx.config.models.max_mb * MODEL_COPIES if ctx.config.models.enabled else 0.0
    details.update(spool_max_mb=spool_mb, models_mb=models_mb)
    if free_mb < spool_mb:
        return [problem(AREA, "free-space", True, f"{free_mb:,.0f} MB free for {state_dir}, less than [spool] max_mb = "
                        f"{spool_mb:g}: a long broker outage would fill the disk before the spool's own limit",
                        f"free space on {probe}, or lower [spool] max_mb to at most {max(free_mb * 0.8, 1):.0f}", **details)]
    if free_mb < spool_mb + models_mb:
        return [problem(AREA, "free-space", False, f"{free_mb:,.0f} MB free for {state_dir}: enough for the spool "
                        f"({spool_mb:g} MB) but not also for a pushed model ([models] max_mb {ctx.config.models.max_mb:g} x "
                        f"{MODEL_COPIES})", f"free space on {probe}, or lower [models] max_mb", **details)]
    uses = [f"spool up to {spool_mb:g} MB" if spool_mb else "no spool (no MQTT pipeline)",
            f"model pushes up to {models_mb:g} MB" if models_mb else "no model pushes"]
    return [ok(AREA, "free-space", f"{free_mb:,.0f} MB free for {state_dir} ({', '.join(uses)})", **details)]
