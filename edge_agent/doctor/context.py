"""What every check reads from: the root it looks under, the config (when there is one) and the
bounds on anything that could hang.

`root` is "/" on a board. A fixture tree (tests) or a mounted image puts the same layout under
another folder: every file a check reads goes through `path()`. Things that are not files (the
clock, the broker, the interpreter itself, child processes) are always this machine's.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.sources.spec import source_kind

SERVICE_USER = "edge-agent"  # the user deploy/install.sh creates and the unit runs as
DEFAULT_TIMEOUT_S = 5.0
CAMERA_KINDS = ("camera", "v4l2", "picamera2")


@dataclass(frozen=True)
class DoctorContext:
    root: Path = Path("/")
    config: AgentConfig | None = None
    config_path: Path | None = None
    service_user: str = SERVICE_USER
    timeout_s: float = DEFAULT_TIMEOUT_S
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def live(self) -> bool:
        """True when the root is this machine's own (device nodes, commands and files agree)."""
        return self.root == Path("/")

    def path(self, absolute: str | os.PathLike) -> Path:
        """`absolute` as seen under the root ("/sys/x" -> ROOT/sys/x)."""
        text = os.fspath(absolute)
        if self.live or not text.startswith("/"):
            return Path(text)
        return self.root / text.lstrip("/")

    def read_text(self, absolute: str | os.PathLike, limit: int = 65536) -> str | None:
        """A small file's text under the root, or None when it is missing or unreadable.

        Never opens FIFOs or devices: sysfs and procfs attributes are regular files, and a
        fixture that put something else there must not make the doctor block."""
        path = self.path(absolute)
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                return None
            with open(path, "rb") as handle:
                return handle.read(limit).decode("utf-8", "replace")
        except OSError:
            return None

    # --- what the config needs ---------------------------------------------------------
    @property
    def pipelines(self) -> tuple[PipelineConfig, ...]:
        return self.config.pipelines if self.config else ()

    def edgetpu_pipelines(self) -> list[PipelineConfig]:
        return [p for p in self.pipelines if p.delegate.kind == "edgetpu"]

    def camera_pipelines(self) -> list[PipelineConfig]:
        return [p for p in self.pipelines if source_kind(p.source) in CAMERA_KINDS]

    def needs_mqtt(self) -> bool:
        return bool(self.config and self.config.mqtt.enabled and any("mqtt" in p.sinks for p in self.pipelines))

    def needs_serial(self) -> bool:
        return bool(self.config and self.config.serial and any("serial" in p.sinks for p in self.pipelines))
