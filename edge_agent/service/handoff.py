"""The hand-off between the capture thread and the inference thread.

Live sources must never build a queue: the slot holds one prepared frame and a newer one
replaces it (the replaced one is counted as dropped). Files must not lose frames: the
producer waits until the slot is free.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

Item = TypeVar("Item")


class FrameSlot(Generic[Item]):
    """A one-item mailbox; `newest_wins` chooses between dropping and waiting."""

    def __init__(self, newest_wins: bool):
        self.newest_wins = newest_wins
        self.dropped = 0
        self._item: Item | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, item: Item) -> Item | None:
        """Offer an item. Returns the item it replaced (dropped, to recycle), if any.

        With newest_wins=False this waits for the consumer; it returns `item` itself
        when the slot is closed while waiting (nothing was handed over).
        """
        with self._cond:
            if self._closed:
                return item
            replaced = None
            if self._item is not None:
                if self.newest_wins:
                    replaced = self._item
                    self.dropped += 1
                else:
                    while self._item is not None and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return item
            self._item = item
            self._cond.notify_all()
            return replaced

    def take(self, timeout_s: float) -> Item | None:
        """The waiting item, or None after `timeout_s` or once closed and empty."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    def finish(self) -> None:
        """The producer has no more items: the consumer takes what waits, then gets None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def close(self) -> Item | None:
        """Wake everybody up; returns an item still waiting (to recycle)."""
        with self._cond:
            self._closed = True
            item, self._item = self._item, None
            self._cond.notify_all()
            return item

    @property
    def closed(self) -> bool:
        return self._closed
