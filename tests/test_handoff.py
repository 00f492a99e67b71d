"""FrameSlot, the one-item hand-off between the capture and inference threads, with real threads."""

from __future__ import annotations

import threading
import time

from edge_agent.service.handoff import FrameSlot

HANG_S = 5.0  # bounds only catch a thread that never wakes up


class Producer(threading.Thread):
    """Puts items on a slot from its own thread and records what each put returned."""

    def __init__(self, slot: FrameSlot, items: list):
        super().__init__(name="test-producer")
        self.slot = slot
        self.items = items
        self.returned: list = []
        self.put_done = threading.Event()

    def run(self) -> None:
        for item in self.items:
            self.returned.append(self.slot.put(item))
        self.put_done.set()


def test_newest_wins_replaces_the_waiting_item_returns_it_and_counts_the_drop():
    slot: FrameSlot[str] = FrameSlot(newest_wins=True)
    assert slot.put("a") is None
    assert slot.put("b") == "a"
    assert slot.put("c") == "b"
    assert slot.dropped == 2
    assert slot.take(1.0) == "c"
    assert slot.take(0.05) is None, "the slot holds one item, not a queue"
    assert slot.put("d") is None and slot.dropped == 2, "a put into an empty slot drops nothing"


def test_newest_wins_never_blocks_a_producer_when_nobody_takes():
    slot: FrameSlot[int] = FrameSlot(newest_wins=True)
    producer = Producer(slot, list(range(100)))
    producer.start()
    producer.join(HANG_S)
    assert not producer.is_alive()
    assert slot.dropped == 99 and producer.returned == [None, *range(99)]
    assert slot.take(1.0) == 99


def test_waiting_mode_blocks_the_producer_until_the_consumer_takes():
    slot: FrameSlot[str] = FrameSlot(newest_wins=False)
    assert slot.put("first") is None
    producer = Producer(slot, ["second"])
    producer.start()
    assert not producer.put_done.wait(0.3), "the second put must wait while the slot is full"
    assert slot.take(1.0) == "first"
    assert producer.put_done.wait(HANG_S)
    producer.join(HANG_S)
    assert slot.take(1.0) == "second"
    assert producer.returned == [None] and slot.dropped == 0


def test_waiting_mode_hands_over_every_item_in_order():
    slot: FrameSlot[int] = FrameSlot(newest_wins=False)
    producer = Producer(slot, list(range(200)))
    producer.start()
    received = []
    deadline = time.monotonic() + HANG_S * 4
    while len(received) < 200 and time.monotonic() < deadline:
        item = slot.take(0.5)
        if item is not None:
            received.append(item)
    producer.join(HANG_S)
    assert received == list(range(200))
    assert slot.dropped == 0 and producer.returned == [None] * 200


def test_finish_lets_the_consumer_drain_then_gives_none_at_once():
    slot: FrameSlot[str] = FrameSlot(newest_wins=False)
    slot.put("last")
    slot.finish()
    assert slot.closed
    assert slot.take(30.0) == "last", "finish keeps the item that was waiting"
    started = time.monotonic()
    assert slot.take(30.0) is None
    assert time.monotonic() - started < HANG_S, "take must not wait out its timeout once finished"
    assert slot.put("too late") == "too late", "nothing is handed over after finish"


def test_finish_wakes_a_consumer_that_is_waiting():
    slot: FrameSlot[str] = FrameSlot(newest_wins=False)
    result: list = []
    consumer = threading.Thread(target=lambda: result.append(slot.take(30.0)), name="test-consumer")
    consumer.start()
    time.sleep(0.1)
    slot.finish()
    consumer.join(HANG_S)
    assert not consumer.is_alive() and result == [None]


def test_close_wakes_a_blocked_producer_and_returns_the_waiting_item():
    slot: FrameSlot[str] = FrameSlot(newest_wins=False)
    slot.put("waiting")
    producer = Producer(slot, ["blocked"])
    producer.start()
    assert not producer.put_done.wait(0.3)
    assert slot.close() == "waiting", "close hands back the waiting item so its buffer can be recycled"
    producer.join(HANG_S)
    assert not producer.is_alive()
    assert producer.returned == ["blocked"], "a put woken by close returns its own item: nothing was handed over"
    assert slot.take(0.05) is None and slot.closed
