"""The board's answer to fleet discovery (`edge-agent fleet list`, `push --group`, `models list --group`).

A discover request has passed the RequestGate (signature, clock, replay) before it gets here; this
decides whether to answer (the request names a group this board is not in: no; more than
models.max_discovery_answers_per_minute answered in the last minute: no, so whoever may publish a
discover cannot make a fleet flood the broker) and says what the board is: device id, groups,
pipelines with their active model, the agent's version (edge_agent.delivery.fleet_protocol).
"""

from __future__ import annotations

import logging
import secrets
from typing import Callable

from edge_agent import __version__
from edge_agent.delivery.fleet_protocol import MAX_TEXT, BoardAnswer, PipelineInfo, answer_topic, encode_answer
from edge_agent.delivery.request_limits import LogLimiter, RateWindow
from edge_agent.service.model_install import PipelineHost
from edge_agent.service.request_gate import Request

logger = logging.getLogger(__name__)

# drawn once per agent process: two boards that answer as one device id differ here
INSTANCE = secrets.token_hex(8)


class FleetAnswers:
    """Answers admitted discover requests for one agent (called from the model-update worker)."""

    def __init__(self, host: PipelineHost, publish: Callable[[str, bytes], object], per_minute: int):
        self.host = host
        self._publish = publish  # (topic, payload): QoS 1, not retained
        self.answers = RateWindow(per_minute)
        self.answered = 0
        self.held_back = 0  # admitted requests left unanswered by the rate limit
        self._log = LogLimiter(logger)

    def handle(self, request: Request) -> bool:
        """Answer `request` unless it is for another group or over the rate; True when answered."""
        config = self.host.config
        group = request.data.get("group", "")
        if group and group not in config.groups:
            return False
        if not self.answers.allow():
            self.held_back += 1
            self._log.log(logging.WARNING, "discover-rate", "fleet discovery: more than %d requests in the last "
                          "minute (models.max_discovery_answers_per_minute); %d left unanswered so far",
                          self.answers.limit, self.held_back)
            return False
        answer = BoardAnswer(request.request_id, config.device_id, INSTANCE, __version__,
                             tuple(g[:MAX_TEXT] for g in config.groups), self._pipelines())
        self._publish(answer_topic(config.mqtt.topic_prefix, config.device_id), encode_answer(answer))
        self.answered += 1
        logger.debug("fleet discovery %s answered", request.request_id)
        return True

    def _pipelines(self) -> tuple[PipelineInfo, ...]:
        running = self.host.pipelines
        described = []
        for pipeline_config in self.host.config.pipelines:
            pipeline = running.get(pipeline_config.name)
            if pipeline is None:  # it could not start: no model serves it
                described.append(PipelineInfo(pipeline_config.name[:MAX_TEXT], "failed", "", "", ""))
                continue
            ref = pipeline.active.ref
            described.append(PipelineInfo(pipeline_config.name[:MAX_TEXT], str(pipeline.status)[:MAX_TEXT],
                                          ref.name[:MAX_TEXT], (ref.version or "")[:MAX_TEXT], ref.sha256))
        return tuple(described)
