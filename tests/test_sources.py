"""Frame sources against real files, folders, images, a real HTTP MJPEG server and missing devices."""

from __future__ import annotations

import logging
import socket
import time

import cv2
import numpy as np
import pytest

from support import MjpegServer, frame_number, numbered_frames, write_video
from edge_agent.sources import SourceError, SourceSpec, detect_kind, is_live, make_source, redact_url, source_kind

HANG_S = 10.0  # OpenCV's own default timeout is 30 s: anything under this bound means ours was used


def read_all(source, limit: int = 1000) -> list[np.ndarray]:
    """Every frame until the source ends (copied: VideoCaptureSource reuses its buffer)."""
    frames = []
    while len(frames) < limit:
        frame = source.read()
        if frame is None:
            return frames
        frames.append(frame.copy())
    raise AssertionError(f"source did not end after {limit} frames")


def read_n(source, count: int) -> list[np.ndarray]:
    frames = []
    for _ in range(count):
        frame = source.read()
        assert frame is not None, f"source ended after {len(frames)} frames"
        frames.append(frame.copy())
    return frames


def opened(spec: SourceSpec):
    source = make_source(spec)
    source.open()
    return source


def open_error(spec: SourceSpec) -> str:
    source = make_source(spec)
    with pytest.raises(SourceError) as info:
        source.open()
    source.close()
    return str(info.value)


# --- video files --------------------------------------------------------------------


def test_video_file_gives_every_frame_in_order_then_none(tmp_path):
    video = write_video(tmp_path / "numbers.avi", numbered_frames(12))
    source = opened(SourceSpec(uri=str(video)))
    try:
        assert not source.live and source.kind == "file"
        frames = read_all(source)
        assert source.read() is None, "a finished file keeps returning None"
    finally:
        source.close()
    assert len(frames) == 12
    assert [frame_number(f) for f in frames] == list(range(12))
    assert frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8


def test_video_file_with_loop_replays_past_the_end(tmp_path):
    video = write_video(tmp_path / "numbers.avi", numbered_frames(7))
    source = opened(SourceSpec(uri=str(video), loop=True))
    try:
        frames = read_n(source, 7 * 3 + 2)
    finally:
        source.close()
    assert [frame_number(f) for f in frames] == [i % 7 for i in range(23)]


def test_file_that_is_not_a_video_fails_to_open_with_a_hint(tmp_path):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(1).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    message = open_error(SourceSpec(uri=str(junk)))
    assert str(junk) in message and "cannot decode" in message


# --- folders and images -------------------------------------------------------------


def test_folder_reads_images_in_name_order_and_skips_a_corrupt_one_with_one_warning(tmp_path, caplog):
    frames = numbered_frames(4)
    folder = tmp_path / "shots"
    folder.mkdir()
    # written out of name order, in three formats; a text file and a subfolder are not images
    cv2.imwrite(str(folder / "c.bmp"), frames[3])
    cv2.imwrite(str(folder / "a.png"), frames[1])
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    cv2.imwrite(str(folder / "0.jpg"), frames[0])
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()
    caplog.set_level(logging.WARNING, logger="edge_agent")
    source = opened(SourceSpec(uri=str(folder), loop=True))
    try:
        assert source_kind(source.spec) == "folder" and not source.live
        images = read_n(source, 6)  # two rounds: the corrupt file is skipped both times
    finally:
        source.close()
    assert [frame_number(f) for f in images] == [0, 1, 3, 0, 1, 3]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "b.jpg" in warnings[0].getMessage()


def test_folder_without_loop_ends_after_the_last_image(tmp_path):
    for i, frame in enumerate(numbered_frames(3)):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), frame)
    source = opened(SourceSpec(uri=str(tmp_path)))
    try:
        assert [frame_number(f) for f in read_all(source)] == [0, 1, 2]
    finally:
        source.close()


def test_folder_where_no_image_decodes_raises_instead_of_spinning(tmp_path):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"garbage")
    source = opened(SourceSpec(uri=str(tmp_path), loop=True))
    try:
        with pytest.raises(SourceError, match="could be decoded"):
            source.read()
    finally:
        source.close()


def test_single_image_gives_one_frame_without_loop(tmp_path):
    image = tmp_path / "digit.png"
    cv2.imwrite(str(image), numbered_frames(6)[5])
    source = opened(SourceSpec(uri=str(image)))
    try:
        assert source_kind(source.spec) == "image"
        frames = read_all(source)
    finally:
        source.close()
    assert len(frames) == 1 and frame_number(frames[0]) == 5


def test_single_image_with_loop_repeats(tmp_path):
    image = tmp_path / "digit.png"
    cv2.imwrite(str(image), numbered_frames(6)[5])
    source = opened(SourceSpec(uri=str(image), loop=True))
    try:
        frames = read_n(source, 10)
    finally:
        source.close()
    assert all(np.array_equal(f, frames[0]) for f in frames) and frame_number(frames[0]) == 5


@pytest.mark.parametrize(
    "name, kind, expected",
    [
        ("empty", "auto", "holds no images"),
        ("missing.avi", "auto", "does not exist"),
        ("missing.png", "auto", "does not exist"),
        ("missing-folder", "folder", "does not exist"),
        ("missing-folder", "auto", "does not exist"),
    ],
)
def test_missing_or_empty_paths_raise_source_error_naming_the_path(tmp_path, name, kind, expected):
    (tmp_path / "empty").mkdir()
    path = str(tmp_path / name)
    message = open_error(SourceSpec(uri=path, kind=kind))
    assert path in message and expected in message


# --- HTTP MJPEG stream ----------------------------------------------------------------


def test_mjpeg_stream_is_a_live_source_that_reads_consecutive_frames(mjpeg_server):
    spec = SourceSpec(uri=mjpeg_server.url, open_timeout_s=5, read_timeout_s=5)
    assert detect_kind(spec.uri) == "stream" and is_live(spec)
    source = opened(spec)
    try:
        assert source.live and source.kind == "stream"
        frames = read_n(source, 30)
    finally:
        source.close()
    assert frames[0].shape == (120, 160, 3)
    numbers = [frame_number(f) for f in frames]
    # TCP loses nothing: each frame is the one after the previous (mod the 25-frame pattern)
    assert all((b - a) % 25 == 1 for a, b in zip(numbers, numbers[1:])), numbers


def test_stream_where_nothing_listens_fails_within_the_open_timeout():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    message = open_error(SourceSpec(uri=f"http://cam:hunter2@127.0.0.1:{port}/video", open_timeout_s=1, read_timeout_s=1))
    assert time.monotonic() - started < HANG_S
    assert "did not open" in message and "open_timeout_s" in message
    assert "hunter2" not in message, "the password must not reach the logs"


def test_stream_that_accepts_but_never_answers_fails_within_the_open_timeout():
    with socket.socket() as silent:  # connections complete in the backlog; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        message = open_error(SourceSpec(uri=f"http://127.0.0.1:{silent.getsockname()[1]}/video", open_timeout_s=1))
        elapsed_s = time.monotonic() - started
    assert elapsed_s < HANG_S, f"open took {elapsed_s:.1f} s: open_timeout_s was not applied"
    assert "gave up after 1 s" in message


def test_stream_that_stops_sending_raises_within_the_read_timeout(mjpeg_server):
    source = opened(SourceSpec(uri=mjpeg_server.url, open_timeout_s=5, read_timeout_s=1))
    try:
        read_n(source, 5)
        mjpeg_server.stall()
        started = time.monotonic()
        with pytest.raises(SourceError, match="stopped delivering frames"):
            for _ in range(1000):  # frames already buffered come first
                source.read()
        elapsed_s = time.monotonic() - started
    finally:
        source.close()
    assert elapsed_s < HANG_S, f"read blocked {elapsed_s:.1f} s: read_timeout_s was not applied"


def test_stream_that_ends_raises_rather_than_returning_none():
    server = MjpegServer().start()
    source = opened(SourceSpec(uri=server.url, read_timeout_s=2))
    try:
        read_n(source, 3)
        server.stop()
        with pytest.raises(SourceError):
            for _ in range(1000):
                assert source.read() is not None, "a live source never reports a normal end"
    finally:
        source.close()
        server.stop()


# --- devices that are not there --------------------------------------------------------


@pytest.mark.parametrize("uri", ["97", "/dev/video97"])
def test_missing_camera_fails_with_a_hint_about_the_video_group(uri):
    message = open_error(SourceSpec(uri=uri))
    assert uri in message and "video group" in message and "v4l2-ctl" in message


def test_gstreamer_pipeline_without_gstreamer_support_says_so():
    from edge_agent.sources.opencv import opencv_has_gstreamer

    if opencv_has_gstreamer():
        pytest.skip("this OpenCV build has GStreamer")
    message = open_error(SourceSpec(uri="videotestsrc num-buffers=5 ! videoconvert ! appsink"))
    assert "no GStreamer support" in message and "python3-opencv" in message


def test_picamera2_without_picamera2_says_how_to_install_it():
    try:
        import picamera2  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("picamera2 is installed here")
    message = open_error(SourceSpec(uri="picamera2:1"))
    assert "camera 1" in message and "python3-picamera2" in message


# --- recognising and describing sources ------------------------------------------------


def test_detect_kind_recognises_every_kind(tmp_path):
    assert detect_kind("0") == "camera"
    assert detect_kind(" 2 ") == "camera"
    assert detect_kind("/dev/video0") == "v4l2"
    assert detect_kind("/dev/v4l/by-id/usb-cam-video-index0") == "v4l2"
    assert detect_kind("rtsp://user:pw@10.0.0.5:554/stream1") == "stream"
    assert detect_kind("HTTP://cam.local/video.mjpg") == "stream"
    assert detect_kind("udp://0.0.0.0:5000") == "stream"
    assert detect_kind("libcamerasrc ! video/x-raw,width=640 ! videoconvert ! appsink") == "gstreamer"
    assert detect_kind("picamera2") == "picamera2"
    assert detect_kind("picamera") == "picamera2"
    assert detect_kind("picamera2:1") == "picamera2"
    assert detect_kind(str(tmp_path)) == "folder"
    assert detect_kind("shots/frame.JPG") == "image"
    assert detect_kind("clip.mp4") == "file"
    assert detect_kind("recording") == "file"
    assert source_kind(SourceSpec(uri="clip.mp4", kind="stream")) == "stream", "an explicit kind wins"
    assert is_live(SourceSpec(uri="0")) and not is_live(SourceSpec(uri="clip.mp4"))


@pytest.mark.parametrize(
    "uri, secret, expected",
    [
        ("rtsp://admin:secret@10.0.0.5:554/stream1", "secret", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("http://admin:secret@cam.local/video.mjpg", "secret", "http://admin:***@cam.local/video.mjpg"),
        ("rtsp://admin:p@ss:w0rd@10.0.0.5/live", "ss:w0rd", "rtsp://admin:***@10.0.0.5/live"),
        ("http://cam.local/video.cgi?user=admin&pwd=secret&res=1", "secret", "http://cam.local/video.cgi?user=admin&pwd=***&res=1"),
        ("http://cam.local/mjpg?password=secret", "secret", "http://cam.local/mjpg?password=***"),
        ("rtsp://cam.local/live?token=tok3n&ch=1", "tok3n", "rtsp://cam.local/live?token=***&ch=1"),
        ("https://cdn.example/s.m3u8?access_token=abc.def&auth=xyz", "abc.def",
         "https://cdn.example/s.m3u8?access_token=***&auth=***"),
        ("rtspsrc location=rtsp://cam/live user-id=bob user-pw=hunter2 ! decodebin ! appsink", "hunter2",
         "rtspsrc location=rtsp://cam/live user-id=bob user-pw=*** ! decodebin ! appsink"),
        ('souphttpsrc location=http://cam/x proxy-pw="two words" ! jpegdec ! appsink', "two words",
         "souphttpsrc location=http://cam/x proxy-pw=*** ! jpegdec ! appsink"),
        ("rtspsrc location=rtsp://cam/x passwd=s3cr3t!decodebin ! appsink", "s3cr3t",
         "rtspsrc location=rtsp://cam/x passwd=***!decodebin ! appsink"),
    ],
)
def test_redact_url_hides_passwords(uri, secret, expected):
    assert redact_url(uri) == expected
    assert secret not in redact_url(uri)


@pytest.mark.parametrize(
    "uri", ["rtsp://admin@10.0.0.5/live", "http://cam.local:8080/video.mjpg", "/dev/video0", "clip.mp4", "0",
            "v4l2src device=/dev/video0 ! x264enc key-int-max=30 ! appsink", "http://cam/keyframes.mjpg?monkey=1"]
)
def test_redact_url_leaves_uris_without_a_password_alone(uri):
    assert redact_url(uri) == uri


def test_stream_description_never_shows_the_password():
    source = make_source(SourceSpec(uri="http://viewer:hunter2@127.0.0.1:8081/stream.mjpg"))
    assert "hunter2" not in source.description and "viewer:***@" in source.description
