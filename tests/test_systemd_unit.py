"""systemd/edge-agent.service: systemd's own checks (verify, security score) and the hardening
choices that the agent's libraries could break, tried against the real agent."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import DEMO_MODEL, DEMO_VIDEO, REPO, RUNTIMES

UNIT = REPO / "systemd" / "edge-agent.service"
MAX_EXPOSURE = 2.5
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is missing: `make test` installs the systemd package with apt-get"
)


def unit_settings(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys kept (DeviceAllow= is a list)."""
    settings, section = [], ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key, value))
    return settings


def values(key: str) -> list[str]:
    return [value for _, k, value in unit_settings() if k == key]


def verify(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--no-pager", str(unit)], capture_output=True, text=True, timeout=60)


def unit_with_real_exec_start(directory: Path, text: str | None = None) -> Path:
    """The unit with ExecStart= pointing at this venv's edge-agent: verify checks that commands
    exist, and /opt/edge-agent is not installed on a test machine. Everything else is unchanged."""
    executable = Path(sys.executable).parent / "edge-agent"
    assert executable.exists(), f"{executable} is missing: install the package (make install)"
    text = UNIT.read_text() if text is None else text
    text, count = re.subn(r"^ExecStart=/opt/edge-agent/venv/bin/edge-agent ", f"ExecStart={executable} ", text, flags=re.M)
    assert count == 1
    path = directory / "edge-agent.service"
    path.write_text(text)
    return path


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path):
    result = verify(unit_with_real_exec_start(tmp_path))
    output = (result.stdout + result.stderr).strip()
    print(f"systemd-analyze verify: exit {result.returncode}, output: {output or '(none)'}")
    # verify exits 0 on unknown keys and bad values, only warning; any output is a finding
    assert result.returncode == 0 and output == "", output


@needs_systemd_analyze
def test_verify_would_catch_a_mistake(tmp_path):
    """The check above means something: a misspelt key and a bad value are reported."""
    text = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectSytem=strict").replace("Type=notify", "Type=notifyy")
    result = verify(unit_with_real_exec_start(tmp_path, text))
    output = result.stdout + result.stderr
    assert "Unknown key 'ProtectSytem'" in output and "notifyy" in output


@needs_systemd_analyze
def test_security_exposure_is_at_most_2_5():
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security: {score} {match.group(2)} (limit {MAX_EXPOSURE})")
    assert score <= MAX_EXPOSURE, result.stdout


def test_unit_has_the_service_contract():
    """What the agent, install.sh and the README rely on."""
    settings = {(section, key): value for section, key, value in unit_settings()}
    expected = {
        ("Service", "Type"): "notify",
        ("Service", "NotifyAccess"): "main",
        ("Service", "WatchdogSec"): "30",
        ("Service", "ExecStart"): "/opt/edge-agent/venv/bin/edge-agent run --config /etc/edge-agent/agent.toml",
        ("Service", "ExecReload"): "/bin/kill -HUP $MAINPID",
        ("Service", "Restart"): "on-failure",
        ("Service", "RestartSec"): "5",
        ("Unit", "StartLimitIntervalSec"): "300",
        ("Unit", "StartLimitBurst"): "5",
        ("Service", "User"): "edge-agent",
        ("Service", "Group"): "edge-agent",
        ("Service", "SupplementaryGroups"): "video dialout plugdev",
        ("Service", "StateDirectory"): "edge-agent",
        ("Service", "ConfigurationDirectory"): "edge-agent",
        ("Service", "LoadCredential"): "mqtt_password:/etc/edge-agent/mqtt_password",
        ("Service", "TimeoutStopSec"): "10",
        ("Service", "DevicePolicy"): "closed",
    }
    assert {key: settings.get(key) for key in expected} == expected
    for device in ("char-video4linux", "char-ttyUSB", "char-ttyACM", "char-usb_device", "char-apex"):
        assert f"{device} rw" in values("DeviceAllow")


def test_hardening_that_would_break_the_agent_stays_off():
    keys = {key for _, key, _ in unit_settings()}
    # ProcSubset=pid hides /proc/cpuinfo, which XNNPACK/ruy (cpuinfo) and OpenBLAS read on ARM.
    # PrivateDevices= hides cameras, serial ports and the Coral. PrivateUsers= breaks the device
    # groups. IPAddressDeny= would cut MQTT. PrivateNetwork= likewise.
    assert not keys & {"ProcSubset", "PrivateDevices", "PrivateUsers", "IPAddressDeny", "PrivateNetwork"}
    # libusb (Coral USB) refuses to initialise without a netlink socket for hotplug events.
    assert "AF_NETLINK" in values("RestrictAddressFamilies")[0].split()


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(66, 0, 0, 0, 0) >= 0:  # PR_GET_MDWE
        return True
    return ctypes.get_errno() != errno.EINVAL


@pytest.mark.skipif(not _mdwe_supported(), reason="kernel without prctl(PR_SET_MDWE) (Linux < 6.3): cannot emulate MemoryDenyWriteExecute=")
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_agent_runs_without_writable_executable_memory(runtime, tmp_path):
    """MemoryDenyWriteExecute=yes kills or cripples a JIT. prctl(PR_SET_MDWE) is the kernel's own
    version of the same rule (systemd ≥ 257 uses it): the demo must still run, on XNNPACK."""
    assert values("MemoryDenyWriteExecute") == ["yes"]
    launcher = (
        "import ctypes, mmap, os, sys\n"
        "assert ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0, 'PR_SET_MDWE failed'\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    sys.exit('a writable+executable mapping was still allowed')\n"
        "except PermissionError:\n"
        "    pass\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'edge_agent', *sys.argv[1:]])\n"
    )
    models = [DEMO_MODEL] + [m for m in (REPO / "models/bench/mobilenet_v2_float32.tflite",) if m.exists()]
    for model in models:
        result = subprocess.run(
            [sys.executable, "-c", launcher, "run", "--model", str(model), "--source", str(DEMO_VIDEO),
             "--no-mqtt", "--runtime", runtime, "--max-frames", "30"],
            capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        predictions = [line for line in result.stdout.splitlines() if line.startswith("{")]
        assert result.returncode == 0 and len(predictions) == 30, f"{model.name} on {runtime}:\n{result.stderr[-3000:]}"
        assert "XNNPACK" in result.stderr or runtime != "litert", "LiteRT should still build its XNNPACK delegate"
