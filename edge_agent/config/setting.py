"""One declaration per configuration key: default, bounds or choices, and a one-line description.

`setting(...)` is used as a dataclass field's default; it stores a `Setting` in the field's
metadata, where the parser (parser.py) and the reference renderer (reference.py) read it.
The field's type hint says what kind of value the key takes.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

REQUIRED: Any = MISSING  # a key the file must set


@dataclass(frozen=True)
class Setting:
    """What a key accepts and means. Bounds are inclusive.

    `maximum` belongs to the value's domain (a port, a QoS, a score) and is part of every message
    about the key; `cap` is a sanity limit past which a value can only be a mistake (threads,
    rates, sizes, durations): messages name it when it is exceeded. `smallest` is the least
    value allowed besides 0 for keys where 0 means "off" (max_fps = 1e-300 is no rate)."""

    doc: str
    minimum: float | None = None
    maximum: float | None = None
    cap: float | None = None
    smallest: float | None = None
    choices: tuple[Any, ...] | None = None
    path: bool = False  # a file or folder, resolved against the config file's folder
    expected: str = ""  # replaces the generated "expected ..." text (lists with special items)
    check: Callable[[Any], str | None] | None = None  # the value's problem, without the key path
    item_check: Callable[[Any], bool] | None = None  # list items that pass it are accepted
    unique: bool = False  # lists: repeated items are dropped, first one kept
    default_text: str = ""  # the default as the reference shows it, when it is computed
    default_from: Callable[[dict[str, Any]], Any] | None = None  # default from the keys read before it
    derive: Callable[[Any, dict[str, Any]], Any] | None = None  # not a key: computed from the table
    custom: Any = None  # a CustomKey (parser.py) for keys with an irregular shape
    key_type: str = ""  # the type as the reference shows it, when the type hint does not say it
    allowed: str = ""  # what `check` accepts, as the reference states it
    optional: bool = False  # a table of named tables that may be absent (pipelines must have one)
    item_name: str = "NAME"  # how the reference names one of the named tables ([zones.ZONE])

    @property
    def is_key(self) -> bool:
        return self.derive is None

    def expected_number(self, kind: str, full: bool = False) -> str:
        """ "a number >= 0.0", "a whole number from 1 to 65535": what the messages say is expected.
        `full` adds the cap (for values past it); without it, a message about a wrong type or a
        value below the minimum states the domain only."""
        upper = self.maximum if self.maximum is not None else (self.cap if full else None)
        if self.smallest is not None and full:
            return f"0 or {kind} from {self.smallest} to {upper}" if upper is not None else f"0 or {kind} >= {self.smallest}"
        if self.minimum is not None and upper is not None:
            return f"{kind} from {self.minimum} to {upper}"
        if self.minimum is not None:
            return f"{kind} >= {self.minimum}"
        if upper is not None:
            return f"{kind} <= {upper}"
        return kind

    def number_problem(self, value: float) -> str | None:
        """Why a number of the right type is out of range (None when it is fine)."""
        if isinstance(value, float) and not math.isfinite(value):
            return "range"
        if self.minimum is not None and value < self.minimum:
            return "below"
        upper = self.maximum if self.maximum is not None else self.cap
        if upper is not None and value > upper:
            return "range"
        if self.smallest is not None and value != 0 and value < self.smallest:
            return "range"
        return None


def setting(default: Any = REQUIRED, doc: str = "", *, factory: Callable[[], Any] | None = None, **options: Any) -> Any:
    """A dataclass field that is also a configuration key (see Setting for the options)."""
    metadata = {"setting": Setting(doc, **options)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def derived(doc: str, derive: Callable[[Any, dict[str, Any]], Any], default: Any = REQUIRED, **options: Any) -> Any:
    """A field that is not a key: computed from its table (`derive(table, values_read_so_far)`)."""
    return setting(default, doc, derive=derive, **options)


def setting_of(dataclass_field: Any) -> Setting | None:
    return dataclass_field.metadata.get("setting")
