"""The agent's configuration: one TOML file, parsed and validated once, into frozen dataclasses.

Every key is declared once, in the frozen dataclass of its table, as a field whose type hint is
the key's type and whose default is `setting(default, "one-line description", minimum=...,
cap=..., choices=...)`; schema.py holds the top level (AgentConfig) and names the module of every
other table. parser.py reads any such dataclass (one generic walk: unknown keys rejected, every
problem named by its key path, NaN and infinities refused); reference.py renders the README's
configuration reference from the same declarations, and a test keeps the two equal.

Adding a key is one line in the dataclass of its table, e.g. in PipelineConfig (pipeline.py):

    min_area: float = setting(0.0, "detections smaller than this share of the frame are dropped",
                              minimum=0.0, maximum=1.0)

then `python -m edge_agent.config.reference --update README.md` regenerates the reference (`--check
README.md` tells whether it is current).
A new table is a new frozen dataclass of such fields, used as a field's type (`X | None` when
the table's absence means something); a table of named tables is `tuple[X, ...]` (pipelines).
Checks across keys go in the dataclass's `cross_check()`; keys of an irregular shape (a string
or a table, like `source` and `delegate`) take `custom=` an object with a `read(table, name)`.
Bounds: `minimum`/`maximum` are the value's domain (stated in every message); `cap` is a sanity
limit (num_threads = 1000000 is a mistake) and `smallest` the least value besides 0 = off.

Why not pydantic v2 (as Frigate does): measured on the 2-core VM (VmRSS before/after the import,
python -X importtime), `import pydantic` plus one small frozen model with extra="forbid" costs
+16.2 MB RSS and 104-120 ms; this package costs +1.5 MB and ~14 ms (tomllib included) and parses
a four-pipeline file in 0.3 ms. The agent's goal is a peak RSS <= 100 MB with MobileNetV2 (103 MB
before this change), so pydantic alone would have cost more than the whole margin.
"""

from edge_agent.config.anchor_ssd import (
    ANCHOR_PRESETS,
    NMS_ALGORITHMS,
    AnchorsConfig,
    BoxDecoderConfig,
    anchor_ssd_problems,
    resolve_anchor_preset,
    resolve_anchor_ssd,
)
from edge_agent.config.connections import (
    SERIAL_FORMATS,
    SPOOL_POLICIES,
    HttpConfig,
    ModelsConfig,
    MqttConfig,
    SerialConfig,
    SpoolConfig,
    TlsConfig,
    format_server,
    is_loopback,
    parse_listen,
)
from edge_agent.config.parser import ConfigError, load_config, parse_config, read_toml
from edge_agent.config.pipeline import (
    BOX_UNITS,
    COLOR_ORDERS,
    DEFAULT_THRESHOLD,
    DELEGATE_CHOICES,
    DELEGATE_FAILURE_CHOICES,
    PICAMERA_PATTERN,
    PREPROCESS_KEYS,
    RESIZE_MODES,
    RUNTIME_CHOICES,
    SINK_CHOICES,
    SOURCE_KINDS,
    STREAM_SCHEMES,
    TASK_CHOICES,
    TASKS,
    DelegateSpec,
    PipelineConfig,
    PreprocessOptions,
    SnapshotConfig,
    SourceSpec,
    looks_like_path,
    uri_kind,
)
from edge_agent.config.schema import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, LOG_LEVELS, AgentConfig
from edge_agent.config.setting import REQUIRED, Setting, setting
from edge_agent.config.topics import topic_safe

__all__ = [
    "ANCHOR_PRESETS", "BOX_UNITS", "NMS_ALGORITHMS", "AnchorsConfig", "BoxDecoderConfig", "anchor_ssd_problems",
    "resolve_anchor_preset", "resolve_anchor_ssd", "COLOR_ORDERS", "DEFAULT_CONFIG_PATH", "DEFAULT_STATE_DIR", "DEFAULT_THRESHOLD", "DELEGATE_CHOICES",
    "DELEGATE_FAILURE_CHOICES", "LOG_LEVELS", "PICAMERA_PATTERN", "PREPROCESS_KEYS", "RESIZE_MODES",
    "RUNTIME_CHOICES", "SERIAL_FORMATS", "SINK_CHOICES", "SOURCE_KINDS", "SPOOL_POLICIES", "STREAM_SCHEMES",
    "TASK_CHOICES", "TASKS", "REQUIRED", "AgentConfig", "ConfigError", "DelegateSpec", "HttpConfig",
    "ModelsConfig", "MqttConfig", "PipelineConfig", "PreprocessOptions", "SerialConfig", "Setting",
    "SnapshotConfig", "SourceSpec", "SpoolConfig", "TlsConfig", "format_server", "is_loopback", "load_config", "looks_like_path",
    "parse_config", "parse_listen", "read_toml", "setting", "topic_safe", "uri_kind",
]
