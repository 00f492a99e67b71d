"""The board's answers to `edge-agent push`, `models rollback` and `models list`: events on `{base}/events`.

Every answer is published at QoS 1 and remembered as its request's latest (the last REMEMBERED_IDS
requests), so a pusher that lost one during a broker blip and asks again (a resent begin or end)
hears it again. A message refused before it was authenticated is answered without the id it
claims, so it cannot end someone else's push, and at most REFUSAL_EVENTS_PER_MINUTE times.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque

from edge_agent.delivery.request_limits import LogLimiter, RateWindow, clip
from edge_agent.delivery.update_protocol import is_valid_id
from edge_agent.service.model_install import PipelineHost
from edge_agent.service.request_gate import Refusal

logger = logging.getLogger(__name__)

REMEMBERED_IDS = 256  # finished transfers and requests whose final answer is repeated on request
REFUSAL_EVENTS_PER_MINUTE = 30  # answers to requests that were refused before being authenticated
MAX_REASON_CHARS = 1000


class UpdateAnswers:
    """Publishes the events of one board's model updates and remembers the latest of each request."""

    def __init__(self, host: PipelineHost, publisher, events_topic: str, log: LogLimiter):
        self.host = host
        self.publisher = publisher  # MqttPublisher: publish()
        self.events_topic = events_topic
        self._log = log  # shared with the rest of the updater: a kind is rate-limited once, wherever it is logged
        self._done_ids: deque[str] = deque(maxlen=REMEMBERED_IDS)
        self._answers: OrderedDict[str, dict] = OrderedDict()  # id -> its latest event (final ones are repeated)
        self._answers_lock = threading.Lock()
        self._refusal_events = RateWindow(REFUSAL_EVENTS_PER_MINUTE)

    def finished(self, request_id: str) -> None:
        """`request_id` is over: a resent begin or end of it is answered with its final event."""
        self._done_ids.append(request_id)

    def is_finished(self, request_id: str) -> bool:
        return request_id in self._done_ids

    def repeat(self, request_id: str) -> bool:
        """Publish a request's latest answer again (a pusher that lost it during a broker blip asks with
        a resent end or begin); False when the board does not remember the request."""
        with self._answers_lock:
            answer = self._answers.get(request_id)
        if answer is None:
            return request_id in self._done_ids
        self.publisher.publish(self.events_topic, json.dumps({**answer, "ts": round(time.time(), 3)},
                                                             separators=(",", ":")), qos=1)
        return True

    def refused(self, refusal: Refusal) -> None:
        """A message refused before it was authenticated: a short answer without the id it claims (so it
        cannot end anyone's push), a rate-limited log line, and at most REFUSAL_EVENTS_PER_MINUTE answers."""
        self._log.log(logging.WARNING, refusal.kind, "model request refused: %s", clip(refusal.reason, 300))
        if refusal.silent or not self._refusal_events.allow():
            return
        claimed = refusal.claimed_id if is_valid_id(refusal.claimed_id) else ""
        self.event("rejected", reason=refusal.reason, claimed_id=claimed, log=False)

    def event(self, event: str, *, transfer_id: str = "", request_id: str = "", pipeline: str = "", reason: str = "",
              previous: dict | None = None, new: dict | None = None, missing: list[int] | None = None,
              claimed_id: str = "", models: dict | None = None, log: bool = True) -> None:
        """Publish one event (QoS 1), remember it as the request's latest answer, and log it once."""
        reason = clip(reason, MAX_REASON_CHARS)
        payload: dict = {"device": self.host.config.device_id, "pipeline": pipeline, "event": event, "reason": reason,
                         "previous": previous, "new": new, "ts": round(time.time(), 3)}
        if transfer_id:
            payload["transfer_id"] = transfer_id
        if request_id:
            payload["request_id"] = request_id
        if claimed_id:
            payload["claimed_id"] = claimed_id
        if missing is not None:
            payload["missing"] = missing
        if models is not None:
            payload["models"] = models
        subject = transfer_id or request_id
        if subject and event != "missing":
            with self._answers_lock:
                self._answers[subject] = payload
                self._answers.move_to_end(subject)
                while len(self._answers) > REMEMBERED_IDS:
                    self._answers.popitem(last=False)
        self.publisher.publish(self.events_topic, json.dumps(payload, separators=(",", ":")), qos=1)
        if not log:
            return
        subject = subject or "request"
        if event == "rejected":
            logger.warning("model update %s rejected: %s", subject, clip(reason, 300))
        elif event in ("activated", "rolled_back"):
            logger.info("model update %s: pipeline %s %s %s %s (was %s %s)%s", subject, pipeline, event.replace("_", " "),
                        (new or {}).get("name"), (new or {}).get("version"), (previous or {}).get("name"),
                        (previous or {}).get("version"), f": {reason}" if reason else "")
        else:
            logger.debug("model update %s: %s %s", subject, event, reason)

