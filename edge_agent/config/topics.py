"""Names as they appear in MQTT topics and Home Assistant entity ids: which names may be a topic
level (device id, pipeline and zone names, groups), how a label becomes one, and the entity id
Home Assistant makes of a name. The schema checks names with these; the publishers build topics
and discovery messages with the same functions, so a name the config accepts is one they can use.
"""

import functools
import re

TOPIC_UNSAFE = "must not contain '/', '+', '#' or spaces (it is part of MQTT topics)"
NO_TOPIC_CHARACTERS = "no '/', '+', '#' or spaces"


def topic_safe(text: str) -> bool:
    return bool(text) and not any(c in text for c in "/+# \t\n")


def slug(text: str) -> str:
    """`text` as Home Assistant makes entity ids of it: lower case, runs of anything but a-z and 0-9
    become one "_", none at either end ("Front Door" and "front-door" are both "front_door")."""
    import unicodedata

    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


@functools.lru_cache(maxsize=4096)
def label_segment(label: str) -> str:
    """A label as one topic level: '/', '+', '#' and whitespace become '_' ("traffic light" → "traffic_light")."""
    return re.sub(r"[/+#\s]+", "_", label) or "_"
