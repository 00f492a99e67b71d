"""What a new configuration changes, decided before anything is touched (SIGHUP reload).

Model-only changes (model file, labels, task, thresholds, preprocessing, runtime, delegate)
swap the model between two frames; changes to a pipeline's source, sinks or pacing restart
that pipeline; MQTT, spool, serial, device id and state directory need a restart of the
agent, because changing them would drop the MQTT session; so do trusted keys and [models]
(the model updater holds them). `groups` take effect at the next state message (and the group pushes the
board hears within a fraction of a second), `log_level` at
once (unless `run --log-level` was given).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace

from edge_agent.config import AgentConfig, PipelineConfig

MODEL_FIELDS = frozenset({
    "model", "labels", "task", "runtime", "delegate", "on_delegate_failure", "num_threads",
    "top_k", "threshold", "max_detections", "preprocess",
    "iou", "thresholds", "box_units", "anchors", "box_decoder",  # decoding: the decoder is rebuilt with the model
})
AGENT_FIELDS_NEEDING_RESTART = ("device_id", "state_dir", "mqtt", "spool", "serial", "trusted_keys", "allow_unsigned_models",
                                "homeassistant", "http",
                                "allow_unsigned_pushes", "models")

_CONFIG_KEY = {"allow_unsigned_pushes": "allow_unsigned_models"}  # derived fields and the key they come from


@dataclass
class ReloadPlan:
    add: list[PipelineConfig] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    restart: list[PipelineConfig] = field(default_factory=list)
    swap_model: list[PipelineConfig] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # agent-level keys that need a restart

    @property
    def ignored_keys(self) -> list[str]:
        """The config keys behind `ignored`, as the user wrote them (for the log)."""
        return list(dict.fromkeys(_CONFIG_KEY.get(name, name) for name in self.ignored))

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.restart or self.swap_model)


def plan_reload(old: AgentConfig, new: AgentConfig) -> ReloadPlan:
    plan = ReloadPlan()
    for name in AGENT_FIELDS_NEEDING_RESTART:
        if getattr(old, name, None) != getattr(new, name, None):
            plan.ignored.append(name)
    old_pipelines = {p.name: p for p in old.pipelines}
    new_pipelines = {p.name: p for p in new.pipelines}
    plan.remove = [name for name in old_pipelines if name not in new_pipelines]
    for name, pipeline in new_pipelines.items():
        before = old_pipelines.get(name)
        if before is None:
            plan.add.append(pipeline)
        elif before != pipeline:
            changed = {f.name for f in fields(PipelineConfig) if getattr(before, f.name) != getattr(pipeline, f.name)}
            (plan.swap_model if changed <= MODEL_FIELDS else plan.restart).append(pipeline)
    return plan


def effective_config(old: AgentConfig, new: AgentConfig, plan: ReloadPlan) -> AgentConfig:
    """The new config, with the agent-level parts that need a restart kept as they run now."""
    return replace(new, **{name: getattr(old, name) for name in plan.ignored})


def apply_log_level(level: str) -> None:
    """Set the level of the root logger (which the CLI configured) to a config's log_level."""
    logging.getLogger().setLevel(getattr(logging, level.upper()))
