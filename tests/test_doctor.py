"""`edge-agent doctor` as a real child process: on this machine's own files, on fixture trees laid
out like real boards (tests/board_fixtures/README.md says where each layout comes from), against
a real mosquitto, a server that never answers, a camera that blocks in open(), and a libedgetpu
(the compiled fake delegate) that loads or crashes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from board_fixture import materialise
from fake_delegate import build_fake_delegate, build_numpy1_extension, compiler
from support import DEMO_MODEL, DEMO_VIDEO, REPO, Broker, free_port

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="device nodes with fixture groups need chown (root)")


def doctor(*args: str | Path, env: dict | None = None, timeout: float = 180) -> tuple[int, dict, str, float]:
    """(exit status, the --json report, stderr, seconds) of `python -m edge_agent doctor --json ...`."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "edge_agent", "doctor", "--json", *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.returncode, report, result.stderr, seconds


def checks(report: dict) -> dict[str, dict]:
    return {f"{c['area']}/{c['name']}": c for c in report["checks"]}


def tree_digest(root: Path) -> str:
    """Every path, mode and content under `root`: the doctor must change none of them."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest.update(f"{path.relative_to(root)} {st.st_mode} {st.st_uid} {st.st_gid}\n".encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def fake_delegate(tmp_path_factory):
    if compiler() is None:
        pytest.skip("no C compiler")
    return build_fake_delegate(tmp_path_factory.mktemp("delegate"))


# ---------------------------------------------------------------------------- this machine


def test_this_machine_without_a_config_reports_its_real_facts():
    status, report, stderr, _ = doctor()
    found = checks(report)
    assert report["config"] is None and found["config/config"]["status"] == "info"
    arch = found["system/architecture"]["details"]
    assert arch["kernel_machine"] == platform.machine()
    assert arch["python_bits"] == (64 if sys.maxsize > 2**32 else 32)
    assert arch["sysconfig_platform"].startswith("linux-")
    assert found["system/python"]["details"]["version"] == platform.python_version()
    assert found["system/glibc"]["details"]["version"] == os.confstr("CS_GNU_LIBC_VERSION").split()[-1]
    versions = found["packages/versions"]["details"]
    assert versions["numpy"] == importlib.metadata.version("numpy")
    assert versions["tflite_runtime"] == importlib.metadata.version("tflite-runtime")
    assert found["packages/runtimes"]["details"]["runtimes"] == ["litert", "tflite-runtime"]
    # nothing the (absent) config needs is broken here
    assert status == 0 and report["ok"] is True, [c for c in report["checks"] if c["status"] == "fail"]


def test_text_output_is_one_line_per_check_with_its_fix():
    status, report, _, _ = doctor()
    text = subprocess.run([sys.executable, "-m", "edge_agent", "doctor"], capture_output=True, text=True, cwd=REPO,
                          timeout=180).stdout.splitlines()
    assert len(text) == len(report["checks"]) + 1, "one line per check and a summary"
    for line, check in zip(text, report["checks"]):
        assert line.split()[0] == {"warn": "WARN", "fail": "FAIL"}.get(check["status"], check["status"])
        assert f"{check['area']}/{check['name']}" in line
        assert re.sub(r"[\d,.]+", "N", check["summary"]) in re.sub(r"[\d,.]+", "N", line)  # free space, time: two runs
        assert ("-> fix: " + check["fix"] in line) == bool(check["fix"])
    assert text[-1].startswith("0 failure(s)")


def test_a_root_that_does_not_exist_is_a_usage_error(tmp_path):
    status, report, stderr, _ = doctor("--root", tmp_path / "nowhere")
    assert status == 2 and not report
    assert f"--root {tmp_path / 'nowhere'} does not exist" in stderr and "/sys, /proc, /dev and /etc" in stderr


def test_a_config_that_does_not_parse_is_reported_and_the_rest_is_checked(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text("[pipelines.main\nsource = ")
    status, report, _, _ = doctor("--config", config)
    found = checks(report)
    assert status == 1 and found["config/config"]["status"] == "fail"
    assert "not valid TOML" in found["config/config"]["summary"] and "check-config" in found["config/config"]["fix"]
    assert {"system/python", "packages/runtimes", "clock/clock", "storage/free-space"} <= set(found)


def test_a_config_with_a_missing_model_fails_and_names_it(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'[mqtt]\nenabled = false\n[pipelines.main]\nsource = "{DEMO_VIDEO}"\nmodel = "{tmp_path}/gone.tflite"\n'
                      'sinks = ["stdout"]\n')
    status, report, _, _ = doctor("--config", config)
    assert status == 1 and f"{tmp_path}/gone.tflite" in checks(report)["config/model-main"]["summary"]


# ---------------------------------------------------------------------------- sources


def test_a_configured_video_opens_with_the_agents_timeouts(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[mqtt]\nenabled = false\n[pipelines.main]\n'
                      f'source = "{DEMO_VIDEO}"\nmodel = "{DEMO_MODEL}"\nsinks = ["stdout"]\n')
    status, report, _, _ = doctor("--config", config)
    source = checks(report)["cameras/source-main"]
    assert source["status"] == "ok" and "opens and delivers frames (160x160" in source["summary"], source
    assert status == 0, [c for c in report["checks"] if c["status"] == "fail"]


def test_a_source_that_blocks_in_open_is_bounded(tmp_path):
    fifo = tmp_path / "hang.jpg"  # imread opens it and waits for a writer that never comes
    os.mkfifo(fifo)
    config = tmp_path / "agent.toml"
    config.write_text(f'[mqtt]\nenabled = false\n[pipelines.stuck]\nsource = {{ uri = "{fifo}", open_timeout_s = 0.5, '
                      f'read_timeout_s = 0.5 }}\nmodel = "{DEMO_MODEL}"\nsinks = ["stdout"]\n')
    status, report, _, seconds = doctor("--config", config, timeout=120)
    source = checks(report)["cameras/source-stuck"]
    assert status == 1 and source["status"] == "fail"
    assert "did not open or deliver a frame within 11 s" in source["summary"], source
    assert seconds < 90, f"the doctor took {seconds:.0f} s"


# ---------------------------------------------------------------------------- fixture boards


@as_root
def test_pi4_with_a_usb_coral_on_usb2_and_googles_libedgetpu(tmp_path):
    root = materialise("pi4-usb-coral", tmp_path)
    before = tree_digest(root)
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    found = checks(report)
    assert tree_digest(root) == before, "the doctor changed the tree it read"
    assert status == 1
    assert found["system/board"]["details"]["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert found["system/board"]["details"]["raspberry_pi_os"] is True
    usb = found["edgetpu/usb"]
    assert usb["status"] == "warn" and usb["details"] == {"sysfs": "1-1.3", "id": "18d1:9302", "speed_mbps": 480.0}
    assert "USB 2 port" in usb["summary"] and "USB 3" in usb["fix"]
    assert found["edgetpu/usb-access"]["status"] == "ok"  # the udev rule gave the node group plugdev
    library = found["edgetpu/library"]["details"]
    assert library["package"] == "libedgetpu1-std" and library["version"] == "16.0" and library["tf_version"] == "2.5.0"
    match = found["edgetpu/match-tflite-runtime"]
    assert match["status"] == "warn" and "TensorFlow 2.5.0" in match["summary"] and "16.0tf2.17.1" in match["fix"]
    # the placeholder in the tree is not a library: said plainly
    assert found["edgetpu/load-tflite-runtime"]["status"] == "fail"
    assert "is not a library this machine can load" in found["edgetpu/load-tflite-runtime"]["summary"]
    assert found["edgetpu/runtime"]["details"]["runtime"] == "tflite-runtime"
    group = found["service-user/group-plugdev"]
    assert group["status"] == "fail" and group["fix"].startswith("sudo usermod -aG plugdev edge-agent")
    kinds = {name: found[f"cameras/{name}"]["details"]["kind"] for name in ("video0", "video1", "video10")}
    assert kinds == {"video0": "capture", "video1": "not-capture", "video10": "m2m"}
    assert found["cameras/video0"]["details"]["driver"] == "uvcvideo"
    throttled = found["pi-health/throttled"]
    assert throttled["status"] == "warn" and throttled["details"]["flags"] == 0x50000
    assert "under-voltage since boot" in throttled["summary"] and "power supply" in throttled["fix"]
    assert found["pi-health/temperature"]["details"]["celsius"] == pytest.approx(61.835)


@as_root
def test_pi4_libedgetpu_that_loads_then_one_that_crashes_the_runtime(tmp_path, fake_delegate):
    root = materialise("pi4-usb-coral", tmp_path)
    library = root / "usr/lib/aarch64-linux-gnu/libedgetpu.so.1.0"
    shutil.copy2(fake_delegate.path, library)  # a real delegate library (for this machine's CPU)
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    load = checks(report)["edgetpu/load-tflite-runtime"]
    assert load["status"] == "ok" and "loads with tflite-runtime and a model runs through it" in load["summary"], load
    # the same library, now crashing inside the interpreter as a mismatched build does
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2", env={"FAKE_DELEGATE_CRASH": "prepare"})
    load = checks(report)["edgetpu/load-tflite-runtime"]
    assert status == 1 and load["status"] == "fail"
    assert "crashed the tflite-runtime interpreter (SIGSEGV)" in load["summary"], load
    assert "different TensorFlow releases" in load["summary"] and "16.0tf2.17.1" in load["fix"]


@as_root
def test_pi5_pcie_coral_without_its_driver_then_with_it(tmp_path):
    root = materialise("pi5-pcie-coral", tmp_path)
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    found = checks(report)
    assert status == 1
    pcie = found["edgetpu/pcie"]
    assert pcie["status"] == "fail" and "0000:01:00.0 (1ac1:089a) has no driver" in pcie["summary"]
    assert pcie["details"]["modules"] == {"gasket": True, "apex": True} and "gasket" in pcie["fix"]
    pi5 = found["edgetpu/pi5-pcie"]
    assert pi5["status"] == "fail" and "kernel=kernel8.img" in pi5["summary"] and "pciex1-compat-pi5" in pi5["summary"]
    assert found["edgetpu/library"]["details"]["tf_version"] == "2.17.1"
    assert found["cameras/video0"]["summary"].endswith('a CSI camera on the libcamera stack: use source = "picamera2"')
    assert found["cameras/source-door"]["status"] == "fail" and "python3-picamera2" in found["cameras/source-door"]["fix"]

    # what the fixes do on a real board: the driver binds, the node appears (group apex), config.txt gets its lines
    pci = root / "sys/bus/pci/devices/0000:01:00.0"
    (root / "sys/bus/pci/drivers/apex").mkdir(parents=True)
    os.symlink("../../drivers/apex", pci / "driver")
    (root / "sys/class/apex/apex_0").mkdir(parents=True)
    (root / "sys/class/apex/apex_0/temp").write_text("44800\n")
    node = root / "dev/apex_0"
    node.write_bytes(b"")
    node.chmod(0o660)
    os.chown(node, 0, 994)  # the fixture's apex group
    config = root / "boot/firmware/config.txt"
    config.write_text(config.read_text() + "dtoverlay=pciex1-compat-pi5,no-mip\nkernel=kernel8.img\n")
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    found = checks(report)
    assert found["edgetpu/pcie"]["status"] == "ok" and "apex_0, 44.8 °C" in found["edgetpu/pcie"]["summary"]
    assert found["edgetpu/pi5-pcie"]["status"] == "ok"
    group = found["service-user/group-apex"]
    assert group["status"] == "fail" and "sudo usermod -aG apex edge-agent" in group["fix"]


@as_root
def test_pi3_32bit_with_the_cameras_metadata_node_configured(tmp_path):
    root = materialise("pi3-32bit", tmp_path)
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    found = checks(report)
    assert status == 1
    assert found["system/board"]["summary"].startswith("Raspberry Pi 3 Model B Rev 1.2; Raspbian GNU/Linux 12")
    source = found["cameras/source-shed"]
    assert source["status"] == "fail" and "/dev/video1 is not a capture node" in source["summary"]
    assert source["fix"] == "use /dev/video0 instead"
    assert found["pi-health/throttled"]["details"]["flags"] == 0x50005
    assert "under-voltage now" in found["pi-health/throttled"]["summary"]
    assert found["service-user/groups"]["status"] == "ok"  # video and dialout, as the config needs
    assert found["broker/broker"]["status"] == "skip"
    assert found["edgetpu/device"]["status"] == "info"


@as_root
def test_a_camera_node_that_blocks_in_open_is_bounded(tmp_path):
    root = materialise("pi3-32bit", tmp_path)
    node = root / "dev/video0"
    node.unlink()
    os.mkfifo(node)  # open(O_RDONLY) waits for a writer: a driver stuck in open()
    status, report, _, seconds = doctor("--root", root, "--timeout-s", "1")
    video0 = checks(report)["cameras/video0"]
    assert "VIDIOC_QUERYCAP did not answer: no answer within 11 s" in video0["details"]["error"], video0
    assert video0["details"]["kind"] == "capture"  # udev's record still says what it is
    assert seconds < 90


def test_an_unprivileged_user_runs_it_and_changes_nothing():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to switch to an unprivileged user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", sys.executable]
    probe = subprocess.run([*as_nobody, "-c", "import edge_agent"], capture_output=True, text=True, cwd="/", timeout=60)
    if probe.returncode != 0:  # e.g. a clone inside a `mktemp -d` folder (mode 0700): nobody cannot read the venv
        pytest.skip(f"user nobody cannot run this checkout's Python ({probe.stderr.strip().splitlines()[-1:]}): "
                    f"clone under a folder others can read to run this test")
    folder = Path(tempfile.mkdtemp(prefix="doctor-nobody-"))  # pytest's tmp folders are root-only
    try:
        folder.chmod(0o755)
        root = materialise("pi3-32bit", folder)
        before = tree_digest(root)
        result = subprocess.run([*as_nobody, "-m", "edge_agent", "doctor", "--json", "--root", str(root)],
                                capture_output=True, text=True, cwd=REPO, timeout=180)
        assert result.stdout.startswith("{"), result.stderr
        report = json.loads(result.stdout)
        assert result.returncode == 1 and checks(report)["cameras/source-shed"]["status"] == "fail"
        assert not [c for c in report["checks"] if c["name"] == "doctor"], "no area broke for lack of privileges"
        assert tree_digest(root) == before
    finally:
        shutil.rmtree(folder)


# ---------------------------------------------------------------------------- broker


def broker_config(tmp_path: Path, host: str, port: int, extra: str = "") -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[mqtt]\nhost = "{host}"\nport = {port}\n{extra}\n'
                      f'[pipelines.main]\nsource = "{DEMO_VIDEO}"\nmodel = "{DEMO_MODEL}"\n')
    return config


def test_a_real_broker_accepts_and_the_agent_keeps_its_session(tmp_path, session_broker):
    status, report, _, _ = doctor("--config", broker_config(tmp_path, session_broker.host, session_broker.port))
    found = checks(report)
    assert found["broker/tcp"]["status"] == "ok" and found["broker/login"]["status"] == "ok"
    assert "anonymous" in found["broker/login"]["summary"]
    assert status == 0, [c for c in report["checks"] if c["status"] == "fail"]


def test_every_server_of_a_failover_list_is_checked_by_its_index(tmp_path, session_broker):
    down = f"127.0.0.1:{free_port()}"
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\n[mqtt]\nservers = ["{session_broker.address}", "{down}"]\n'
                      f'[pipelines.main]\nsource = "{DEMO_VIDEO}"\nmodel = "{DEMO_MODEL}"\n')
    status, report, _, _ = doctor("--config", config)
    found = checks(report)
    assert found["broker/login servers[0]"]["status"] == "ok"
    second = found["broker/tcp servers[1]"]
    assert status == 1 and second["status"] == "fail" and down in second["summary"]
    assert f"check [mqtt] servers ({down})" in second["fix"]


def test_a_wrong_password_is_named_as_the_login_step(tmp_path):
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "edge", "right"], check=True, capture_output=True)
    broker = Broker(tmp_path, password_file=passwords).start()
    try:
        (tmp_path / "pw").write_text("wrong\n")
        config = broker_config(tmp_path, broker.host, broker.port, f'username = "edge"\npassword_file = "{tmp_path}/pw"')
        status, report, _, _ = doctor("--config", config)
        login = checks(report)["broker/login"]
        assert status == 1 and login["status"] == "fail"
        assert "refused the login" in login["summary"] and "user 'edge'" in login["summary"], login
        (tmp_path / "pw").write_text("right\n")
        status, report, _, _ = doctor("--config", config)
        assert checks(report)["broker/login"]["status"] == "ok" and "user 'edge'" in checks(report)["broker/login"]["summary"]
    finally:
        broker.stop()


def test_a_broker_that_accepts_tcp_and_never_answers_is_bounded(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # takes the connection and says nothing, like a wedged broker
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        status, report, _, seconds = doctor("--config", broker_config(tmp_path, "127.0.0.1", port), "--timeout-s", "1")
        found = checks(report)
        assert found["broker/tcp"]["status"] == "ok"
        assert found["broker/login"]["status"] == "fail"
        assert found["broker/login"]["summary"] == f"the broker at 127.0.0.1:{port} did not answer CONNECT within 1 s"
        # TLS configured against the same silent server: the handshake is what hangs now
        status, report, _, _ = doctor("--config", broker_config(tmp_path, "127.0.0.1", port, "[mqtt.tls]\n"), "--timeout-s", "1")
        tls = checks(report)["broker/tls"]
        assert tls["status"] == "fail" and "no handshake within 1 s" in tls["summary"], tls
        assert seconds < 60
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_a_closed_port_fails_at_tcp_with_the_fix(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    status, report, _, _ = doctor("--config", broker_config(tmp_path, "127.0.0.1", port))
    tcp = checks(report)["broker/tcp"]
    assert status == 1 and tcp["status"] == "fail" and "Connection refused" in tcp["summary"]
    assert f"127.0.0.1:{port}" in tcp["fix"]
    assert "broker/login" not in checks(report)


def test_tls_to_a_plain_mqtt_port_fails_at_the_handshake(tmp_path, session_broker):
    config = broker_config(tmp_path, session_broker.host, session_broker.port, "[mqtt.tls]\n")
    status, report, _, _ = doctor("--config", config)
    tls = checks(report)["broker/tls"]
    assert status == 1 and tls["status"] == "fail" and tls["summary"].startswith(f"TLS to {session_broker.address} failed")
    assert "8883" in tls["fix"]


# ---------------------------------------------------------------------------- storage, packages


def test_a_spool_larger_than_the_free_space_fails(tmp_path):
    # a small real file system when there is one (tmpfs /dev/shm): [spool] max_mb is capped at 100 GB
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else tmp_path
    state = Path(tempfile.mkdtemp(prefix="doctor-state-", dir=base))
    try:
        free_mb = shutil.disk_usage(state).free / 1024 / 1024
        if free_mb * 2 > 100_000:
            pytest.skip("more free space than [spool] max_mb may be set to")
        config = broker_config(tmp_path, "127.0.0.1", 1, f"[spool]\nmax_mb = {int(free_mb * 2)}")
        config.write_text(config.read_text().replace(f'state_dir = "{tmp_path}/state"', f'state_dir = "{state}"'))
        status, report, _, _ = doctor("--config", config)
        space = checks(report)["storage/free-space"]
        assert status == 1 and space["status"] == "fail" and f"[spool] max_mb = {int(free_mb * 2)}" in space["summary"]
        assert abs(space["details"]["free_mb"] - free_mb) < 500
        assert space["details"]["measured_at"] == str(state)
    finally:
        shutil.rmtree(state)


def test_numpy_2_breaks_tflite_runtime_and_a_picamera2_built_for_numpy_1(tmp_path):
    """numpy 2 and the OpenCV that needs it, pip-installed in front of the venv's packages (as pip
    does in a venv that sees Raspberry Pi OS's system site-packages), break tflite-runtime 2.14 and a
    Picamera2 whose compiled parts were built for numpy 1."""
    target = tmp_path / "numpy2"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                             "numpy==2.2.6", "opencv-python-headless==4.12.0.88"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.skip(f"pip could not fetch numpy 2 / OpenCV 4.12: {result.stderr[-300:]}")
    # Stand-in for apt's python3-picamera2 in a dist-packages folder: it imports simplejpeg, a C
    # extension compiled (here, now) against numpy 1 headers, as Debian's is.
    dist = tmp_path / "usr/lib/python3/dist-packages"
    if build_numpy1_extension(dist) is None:
        pytest.skip("no C compiler or Python.h to build a numpy-1 extension")
    (dist / "picamera2").mkdir()
    (dist / "picamera2" / "__init__.py").write_text("import simplejpeg  # as Picamera2's encoders do\n")
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    env = {"PYTHONPATH": os.pathsep.join([str(target), str(dist), site])}
    config = tmp_path / "agent.toml"
    config.write_text(f'[mqtt]\nenabled = false\n[pipelines.cam]\nsource = "picamera2"\nmodel = "{DEMO_MODEL}"\n'
                      'runtime = "tflite-runtime"\nsinks = ["stdout"]\n')
    status, report, stderr, _ = doctor("--config", config, env=env)
    found = checks(report)
    assert found["packages/versions"]["details"]["numpy"] == "2.2.6"
    broken = found["packages/import-tflite-runtime"]
    assert broken["status"] == "fail" and "numpy.core.multiarray failed to import" in broken["summary"], broken
    assert "built for numpy 1" in broken["summary"] and "numpy<2" in broken["fix"]
    assert found["packages/numpy2-tflite-runtime"]["status"] == "fail"
    picamera = found["packages/picamera2"]
    assert picamera["status"] == "fail" and "built for Debian's numpy 1" in picamera["summary"]
    assert "opencv-python-headless 4.12.0.88 (requires numpy" in picamera["summary"] and ">=2" in picamera["summary"]
    assert "opencv-python-headless==4.11.0.86" in picamera["fix"]
    assert found["packages/runtimes"]["details"]["runtimes"] == ["litert"]
    assert status == 1


@as_root
def test_a_coral_before_first_use_on_usb3_and_a_missing_udev_rule(tmp_path):
    root = materialise("pi4-usb-coral", tmp_path)
    coral = root / "sys/bus/usb/devices/1-1.3"
    (coral / "idVendor").write_text("1a6e\n")
    (coral / "idProduct").write_text("089a\n")
    (coral / "speed").write_text("5000\n")
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    found = checks(report)
    assert found["edgetpu/usb"]["status"] == "ok" and "1a6e:089a, not initialised yet" in found["edgetpu/usb"]["summary"]
    assert "USB 3 (5000 Mbit/s)" in found["edgetpu/usb"]["summary"]
    assert "re-enumerates as 18d1:9302" in found["edgetpu/usb-init"]["summary"]
    # without libedgetpu's rule udev leaves the usbfs node root's
    (root / "usr/lib/udev/rules.d/60-libedgetpu1-std.rules").unlink()
    node = root / "dev/bus/usb/001/004"
    os.chown(node, 0, 0)
    status, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    access = checks(report)["edgetpu/usb-access"]
    assert status == 1 and access["status"] == "fail" and "only root can use the Coral" in access["summary"]
    assert "no udev rule for 18d1/1a6e is installed" in access["summary"]
    assert 'ATTRS{idVendor}=="18d1",ATTRS{idProduct}=="9302",GROUP="plugdev"' in access["fix"]


@as_root
def test_the_configured_runtime_is_the_one_libedgetpu_is_loaded_with(tmp_path, fake_delegate):
    root = materialise("pi4-usb-coral", tmp_path)
    shutil.copy2(fake_delegate.path, root / "usr/lib/aarch64-linux-gnu/libedgetpu.so.1.0")
    config = root / "etc/edge-agent/agent.toml"
    config.write_text(config.read_text().replace('delegate = "edgetpu"', 'runtime = "litert"\ndelegate = "edgetpu"'))
    _, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    found = checks(report)
    assert found["edgetpu/load-litert"]["status"] == "ok", found["edgetpu/load-litert"]
    assert "edgetpu/load-tflite-runtime" not in found and "edgetpu/runtime" not in found  # not auto: no choice to explain
    match = found["edgetpu/match-litert"]  # Google's 16.0 (TensorFlow 2.5) and LiteRT 2.3 (TensorFlow 2.22-dev)
    assert match["status"] == "warn" and "TensorFlow 2.5.0 but litert 2.22.0 is from TensorFlow 2.22.0" in match["summary"]


@as_root
def test_under_voltage_from_the_rpi_volt_hwmon_when_the_firmware_file_is_absent(tmp_path):
    root = materialise("pi4-usb-coral", tmp_path)
    (root / "sys/devices/platform/soc/soc:firmware/get_throttled").unlink()
    (root / "sys/class/hwmon/hwmon1/in0_lcrit_alarm").write_text("1\n")
    _, report, _, _ = doctor("--root", root, "--timeout-s", "2")
    throttled = checks(report)["pi-health/throttled"]
    assert throttled["status"] == "warn" and throttled["details"]["flags"] == 1
    assert "under-voltage now" in throttled["summary"] and "/sys/class/hwmon/hwmon1/in0_lcrit_alarm" in throttled["summary"]


def test_the_clock_line_follows_the_kernels_own_answer():
    from edge_agent.doctor.clock import kernel_clock_state

    state = kernel_clock_state()
    _, report, _, _ = doctor()
    clock = checks(report)["clock/clock"]
    if state is None:
        assert clock["status"] in ("skip", "ok", "warn")
        return
    assert clock["details"]["kernel_synchronised"] == state[0]
    assert clock["status"] == ("ok" if state[0] else "warn")  # no config: an unsynchronised clock is not a failure
