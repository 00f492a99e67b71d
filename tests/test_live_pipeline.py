"""A live source through the real agent: an HTTP MJPEG camera at 30 fps, throttled, lost and back."""

from __future__ import annotations

import json
import signal
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import pytest

from support import DEMO_MODEL, numbered_frames, wait_until

HANG_S = 20.0  # bounds only catch hangs; the agent loads its model first


def published(agent) -> list[dict]:
    """The predictions printed so far (complete lines only: the agent may be mid-write)."""
    text = agent.stdout
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def agent_log_lines(agent, text: str) -> list[str]:
    """The agent's own log lines (not FFmpeg's or OpenCV's) that contain `text`."""
    return [line for line in agent.stderr.splitlines() if " edge_agent." in line and text in line]


@pytest.mark.slow
def test_live_stream_is_throttled_skips_frames_and_survives_the_camera_going_away(tmp_path, mjpeg_server, agent_process):
    agent = agent_process(
        "run", "--model", str(DEMO_MODEL), "--source", mjpeg_server.url, "--no-mqtt", "--max-fps", "5",
        "--state-dir", str(tmp_path / "state"),
    )
    assert wait_until(lambda: len(published(agent)) >= 3, HANG_S), agent.stderr

    # max_fps = 5 on a 30 fps camera: about 5 predictions a second, of frames far apart
    before, started = len(published(agent)), time.monotonic()
    time.sleep(3)
    rate = (len(published(agent)) - before) / (time.monotonic() - started)
    assert 2 <= rate <= 10, f"{rate:.1f} predictions/s with max_fps = 5"
    messages = published(agent)
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    gaps = [b["frame"] - a["frame"] for a, b in zip(messages, messages[1:])]
    assert min(gaps) >= 1 and statistics.median(gaps) >= 3, f"frames were not skipped: gaps {gaps}"

    # the camera goes away for ~3 s: the loss is logged once, the agent keeps running
    mjpeg_server.stop()
    assert wait_until(lambda: agent_log_lines(agent, "stopped delivering frames"), HANG_S), agent.stderr
    time.sleep(1)
    while_down = len(published(agent))
    time.sleep(2)
    assert agent.process.poll() is None, agent.stderr
    assert len(published(agent)) == while_down, "nothing can be published while the camera is away"

    mjpeg_server.start()  # same port
    assert wait_until(lambda: len(published(agent)) >= while_down + 3, HANG_S), agent.stderr
    assert agent.process.poll() is None
    losses = agent_log_lines(agent, "stopped delivering frames") + agent_log_lines(agent, "did not open")
    assert len(losses) == 1, "\n".join(losses)
    # "back" is logged once the camera has stayed up for 5 s, so a relapse never leaves it as the last word
    back = lambda: [line for line in agent_log_lines(agent, "") if line.endswith(" back")]  # noqa: E731
    assert wait_until(lambda: len(back()) == 1, HANG_S), agent.stderr
    assert len(back()) == 1
    after = published(agent)
    assert [m["seq"] for m in after] == list(range(1, len(after) + 1)), "seq continues across the outage"

    agent.signal(signal.SIGTERM)
    assert agent.wait(HANG_S) == 0, agent.stderr


def test_max_fps_holds_right_after_a_stalled_stream_resumes(tmp_path, mjpeg_server, agent_process):
    agent = agent_process(
        "run", "--model", str(DEMO_MODEL), "--source", mjpeg_server.url, "--no-mqtt", "--max-fps", "5",
        "--state-dir", str(tmp_path / "state"),
    )
    assert wait_until(lambda: len(published(agent)) >= 3, HANG_S), agent.stderr
    mjpeg_server.stall()  # shorter than the read timeout: the connection stays up
    time.sleep(1.0)
    stalled_at = len(published(agent))
    mjpeg_server.resume()
    assert wait_until(lambda: len(published(agent)) >= stalled_at + 4, HANG_S), agent.stderr
    agent.signal(signal.SIGTERM)
    assert agent.wait(HANG_S) == 0, agent.stderr
    messages = published(agent)
    gaps_s = [round(b["ts"] - a["ts"], 3) for a, b in zip(messages, messages[1:])]
    # max_fps = 5: frames are captured ~0.2 s apart; the bug processes two frames one camera frame (33 ms) apart
    assert min(gaps_s) >= 0.1, f"capture gaps {gaps_s} s for frames {[m['frame'] for m in messages]}"


class SnapshotServer:
    """A real HTTP camera snapshot URL: every GET returns one JPEG and closes, as `…/snapshot.jpg` does."""

    def __init__(self):
        jpeg = cv2.imencode(".jpg", numbered_frames(1)[0])[1].tobytes()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(jpeg)))
                self.end_headers()
                self.wfile.write(jpeg)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/snapshot.jpg"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="snapshot-server")
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.mark.slow
def test_a_source_that_keeps_dropping_is_reconnected_with_backoff_and_not_logged_per_frame(tmp_path, agent_process):
    camera = SnapshotServer()
    try:
        agent = agent_process("run", "--model", str(DEMO_MODEL), "--source", camera.url, "--no-mqtt",
                              "--state-dir", str(tmp_path / "state"))
        assert wait_until(lambda: published(agent), HANG_S), agent.stderr
        started_requests = camera.requests
        time.sleep(4)
        requests_in_4_s = camera.requests - started_requests
        agent.signal(signal.SIGTERM)
        assert agent.wait(HANG_S) == 0, agent.stderr
    finally:
        camera.stop()
    reconnect_lines = [line for line in agent_log_lines(agent, "") if "stopped delivering frames" in line or line.endswith(" back")]
    # backoff 0.25, 0.5, 1, 2, 2 s: a handful of connections in 4 s, and the trouble logged once, not per cycle
    assert requests_in_4_s <= 8, f"{requests_in_4_s} connections in 4 s"
    assert len(reconnect_lines) <= 3, "\n".join(reconnect_lines[:10])
