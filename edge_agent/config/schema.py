"""The configuration's root, AgentConfig: the top-level keys and the tables they hold, and the
checks across pipelines. With the modules it imports it declares every configuration key, once:
its type (the type hint), default, range or choices, and a one-line description (`setting(...)`,
see setting.py). parser.py reads a TOML file with these declarations, starting here; reference.py
renders the README's configuration reference from them, in the order of AgentConfig's fields.

Where each table is declared:
  connections.py     [mqtt] (with [mqtt.tls]), [spool], [serial], [models], [homeassistant], [http]
  pipeline.py        [pipelines.NAME] with its source, delegate, preprocess and snapshot tables
  labels.py          labels, [pipelines.NAME.labels.LABEL], [pipelines.NAME.thresholds]
  interpretation.py  [pipelines.NAME.events], [pipelines.NAME.zones.ZONE], [pipelines.NAME.publish]
  anchor_ssd.py      [pipelines.NAME.anchors], [pipelines.NAME.box_decoder] and their presets
  topics.py          the names allowed in topics, and the entity ids Home Assistant makes of them
"""

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.config.connections import HomeAssistantConfig, HttpConfig, ModelsConfig, MqttConfig, SerialConfig, SpoolConfig
from edge_agent.config.pipeline import PipelineConfig
from edge_agent.config.setting import derived, setting
from edge_agent.config.topics import NO_TOPIC_CHARACTERS, TOPIC_UNSAFE, slug, topic_safe

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")

LOG_LEVELS = ("debug", "info", "warning", "error")


def _allow_unsigned_pushes(table: Any, values: dict[str, Any]) -> bool:
    # pushed bundles must be signed by a trusted key unless allow_unsigned_models = true is set explicitly
    return table.data.get("allow_unsigned_models") is True


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = setting(doc="part of every topic", factory=socket.gethostname, default_text="the hostname",
                             check=lambda v: f"{v!r} {TOPIC_UNSAFE}" if v and not topic_safe(v) else None,
                             allowed=NO_TOPIC_CHARACTERS)
    state_dir: str = setting(str(DEFAULT_STATE_DIR), "spool, model store", path=True)
    log_level: str = setting("info", "applied again on reload (SIGHUP)", choices=LOG_LEVELS)
    shutdown_timeout_s: float = setting(5.0, "how long a stop may take to deliver what is pending", minimum=0.0,
                                        cap=3600.0)
    mqtt: MqttConfig = setting(MqttConfig(), "the broker")
    spool: SpoolConfig = setting(SpoolConfig(), "store and forward")
    serial: SerialConfig | None = setting(None, "needed when a pipeline lists the serial sink", default_text="none")
    pipelines: tuple[PipelineConfig, ...] = setting((), "one table per pipeline (at least one); NAME is part of its "
                                                        f"topics and has {NO_TOPIC_CHARACTERS}")
    trusted_keys: tuple[str, ...] = setting((), "public keys (.pub) whose signatures on model bundles are trusted",
                                            path=True, item_check=lambda v: isinstance(v, str) and bool(v),
                                            expected="a list of public key files (NAME.pub from `edge-agent keys generate`)")
    allow_unsigned_models: bool = setting(True, "load bare .tflite files and unsigned bundles",
                                          default_from=lambda values: not values["trusted_keys"],
                                          default_text="true while trusted_keys is empty, else false")
    allow_unsigned_pushes: bool = derived("allow_unsigned_models set to true explicitly", _allow_unsigned_pushes, False)
    groups: tuple[str, ...] = setting((), "announced in the retained state and in discovery answers; `edge-agent push "
                                          "--group NAME` targets them",
                                      item_check=lambda v: isinstance(v, str) and topic_safe(v), unique=True,
                                      expected="a list of group names without '/', '+', '#' or spaces")
    models: ModelsConfig = setting(ModelsConfig(), "model delivery")
    homeassistant: HomeAssistantConfig = setting(HomeAssistantConfig(), "Home Assistant discovery")
    http: HttpConfig = setting(HttpConfig(), "the local HTTP server (status page, live view, metrics)")
    # not keys: what was parsed, and the folder its relative paths are relative to (the self-test
    # child parses the same data again instead of receiving dataclasses converted by hand)
    source_toml: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    base_dir: str = field(default=".", compare=False, repr=False)

    def cross_check(self) -> list[tuple[str, str]]:
        problems = [] if self.serial is not None else [
            (f"pipelines.{p.name}.sinks", "'serial' needs a [serial] table with a port") for p in self.pipelines if "serial" in p.sinks]
        if self.homeassistant.enabled:
            problems += _slug_collisions("pipelines", [p.name for p in self.pipelines])
            for p in self.pipelines:
                problems += _slug_collisions(f"pipelines.{p.name}.zones", [z.name for z in p.zones])
                problems += _slug_collisions(f"pipelines.{p.name}.track", list(p.track))
        return problems


def _slug_collisions(path: str, names: list[str]) -> list[tuple[str, str]]:
    """Names that would give Home Assistant the same entity id (and so lose one entity)."""
    by_slug: dict[str, list[str]] = {}
    for name in names:
        by_slug.setdefault(slug(name), []).append(name)
    problems = []
    for key, same in by_slug.items():
        if not key:
            problems.append((path, f"{same[0]!r} has no letter or digit for a Home Assistant entity id: rename it"))
        elif len(same) > 1:
            problems.append((path, f"{' and '.join(repr(n) for n in same)} give the same Home Assistant entity id "
                                   f"({key!r}): rename one"))
    return problems
