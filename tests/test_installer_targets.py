"""install.sh and wheelhouse.sh against the boards they meet: a 32-bit Raspberry Pi OS bundle
(numpy, OpenCV and cffi from apt), a bundle for another CPU (decided by the interpreter, not by
`uname -m`), a copy on a FAT stick without its run bit, and an SD-card image prepared on this
machine and installed at the board's first boot. Real wheels from the index, real installs
into throwaway roots (never this machine's /etc)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import REPO
from test_deploy import MACHINE, PYTHON_ARGS, TARGET_PY_VERSION, account, offline, run, seeded_root

INSTALL = REPO / "deploy" / "install.sh"
WHEELHOUSE = REPO / "deploy" / "wheelhouse.sh"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh creates users and root-owned files: run as root")


def bundle(tmp_path_factory, machine: str, python_version: str = "3.11") -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bundle") / f"edge-agent-{machine}"
    result = run(WHEELHOUSE, "--machine", machine, "--python-version", python_version, "--out", out, "--python", sys.executable)
    return out, result.stdout


@pytest.fixture(scope="module")
def armv7l_bundle(tmp_path_factory):
    return bundle(tmp_path_factory, "armv7l")


@pytest.fixture(scope="module")
def aarch64_bundle(tmp_path_factory):
    return bundle(tmp_path_factory, "aarch64")[0]


@pytest.fixture(scope="module")
def native_bundle(tmp_path_factory):
    return bundle(tmp_path_factory, MACHINE, TARGET_PY_VERSION)


def elf_from_wheel(wheel: Path, suffix: str, destination: Path) -> Path:
    """A real executable-format file built for the wheel's CPU (its first compiled module): what
    install.sh reads of an image's /usr/bin/python3 is only the ELF header."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(suffix))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(archive.read(name))
    destination.chmod(0o755)
    return destination


def test_a_32_bit_bundle_takes_numpy_opencv_and_cffi_from_apt(armv7l_bundle):
    out, stdout = armv7l_bundle
    wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    assert [n.split("-")[0] for n in wheels] == ["cryptography", "edge_agent", "paho_mqtt", "prometheus_client", "pyserial",
                                                 "tflite_runtime"], wheels
    assert any(n.startswith("tflite_runtime-2.14.0-cp311-cp311-manylinux_2_34_armv7l") for n in wheels)
    crypto = next(n for n in wheels if n.startswith("cryptography-"))
    assert int(crypto.split("-")[1].split(".")[0]) < 46 and "armv7l" in crypto  # 46+ needs cffi 2, no armv7l wheel
    manifest = (out / "wheels/manifest.txt").read_text()
    assert "machine: armv7l" in manifest and "system-packages: python3-numpy python3-opencv python3-cffi" in manifest
    assert (out / "wheels/requirements.txt").read_text().split() == [
        "paho-mqtt<3,>=2.1", "pyserial>=3.5", "cryptography<46,>=42", "prometheus-client>=0.20", "tflite-runtime==2.14.0"]
    assert "on the board, first: sudo apt install python3-numpy python3-opencv python3-cffi" in stdout
    assert stdout.rstrip().endswith(f"sudo bash {out.name}/deploy/install.sh --wheelhouse {out.name}/wheels")


def test_a_bundle_for_another_cpu_is_refused_naming_this_pythons_architecture(tmp_path, armv7l_bundle):
    out, _ = armv7l_bundle
    if MACHINE == "armv7l":
        pytest.skip("this machine is armv7l")
    result = offline(out / "deploy/install.sh", "--root", tmp_path / "root", "--wheelhouse", out / "wheels", *PYTHON_ARGS,
                     check=False)
    python = PYTHON_ARGS[1] if PYTHON_ARGS else "/usr/bin/python3"
    assert result.returncode == 1
    assert f"the wheelhouse is for armv7l but {python} is {MACHINE}: build one with deploy/wheelhouse.sh --machine {MACHINE}" in result.stderr
    assert not (tmp_path / "root/opt").exists(), "refused before anything was installed"


def test_a_copy_without_its_run_bit_installs_with_sudo_bash(tmp_path, native_bundle):
    """A FAT stick mounted with showexec shows install.sh without the run bit."""
    out, stdout = native_bundle
    stick = tmp_path / "stick" / out.name
    shutil.copytree(out, stick)
    script = stick / "deploy/install.sh"
    script.chmod(0o644)
    with pytest.raises(PermissionError):
        subprocess.run([str(script), "--help"], capture_output=True)
    assert f"sudo bash {out.name}/deploy/install.sh --wheelhouse {out.name}/wheels" in stdout
    result = offline("bash", script, "--root", tmp_path / "root", "--wheelhouse", stick / "wheels", *PYTHON_ARGS)
    assert "edge-agent" in result.stdout and (tmp_path / "root/opt/edge-agent/venv/bin/edge-agent").exists()
    assert "sudo bash" in run("bash", script, "--help").stdout


def test_an_image_gets_a_first_boot_install_and_nothing_runs_its_python_here(tmp_path, aarch64_bundle):
    root = seeded_root(tmp_path / "image")
    (root / "etc/group").write_text((root / "etc/group").read_text() + "apex:x:994:\n")
    (root / "etc/gshadow").write_text((root / "etc/gshadow").read_text() + "apex:!::\n")
    numpy = next((aarch64_bundle / "wheels").glob("numpy-*.whl"))
    elf_from_wheel(numpy, ".so", root / "usr/bin/python3.11")  # an aarch64 image's interpreter
    os.symlink("python3.11", root / "usr/bin/python3")
    result = offline(aarch64_bundle / "deploy/install.sh", "--root", root, "--wheelhouse", aarch64_bundle / "wheels", "--first-boot")
    print(result.stdout)
    assert "At its first boot the board installs the venv" in result.stdout
    assert not (root / "opt/edge-agent/venv").exists(), "the venv is made on the board, not here"
    staged = root / "opt/edge-agent/bundle"
    assert subprocess.run(["sha256sum", "--quiet", "--strict", "-c", "SHA256SUMS"], cwd=staged / "wheels").returncode == 0
    assert (staged / "deploy/install.sh").read_bytes() == (aarch64_bundle / "deploy/install.sh").read_bytes()
    units = root / "etc/systemd/system"
    for unit in ("edge-agent.service", "edge-agent-firstboot.service"):
        assert (units / unit).read_text() == (REPO / "systemd" / unit).read_text()
        assert (units / "multi-user.target.wants" / unit).is_symlink(), f"{unit} not enabled"
    assert "edge-agent" in account(root, "group", "apex")[3].split(","), "the PCIe Coral's group, since the image has it"
    assert (root / "etc/edge-agent/agent.toml").is_file()
    # the unit the board runs at first boot is valid, and names the staged installer
    firstboot = (units / "edge-agent-firstboot.service").read_text()
    assert "ExecStart=/bin/bash /opt/edge-agent/bundle/deploy/install.sh --wheelhouse /opt/edge-agent/bundle/wheels" in firstboot
    assert "ConditionPathExists=!/opt/edge-agent/.installed" in firstboot
    if shutil.which("systemd-analyze"):
        checked = tmp_path / "verify" / "edge-agent-firstboot.service"
        checked.parent.mkdir()
        checked.write_text(firstboot.replace("/opt/edge-agent/", f"{root}/opt/edge-agent/").replace("/bin/bash", shutil.which("bash")))
        verify = run("systemd-analyze", "verify", checked, check=False)
        assert verify.returncode == 0 and "firstboot" not in verify.stderr, verify.stderr
    again = offline(aarch64_bundle / "deploy/install.sh", "--root", root, "--wheelhouse", aarch64_bundle / "wheels", "--first-boot")
    assert "done (0 change(s))" in again.stdout


def test_an_image_whose_python_is_32_bit_refuses_the_64_bit_bundle(tmp_path, aarch64_bundle, armv7l_bundle):
    root = seeded_root(tmp_path / "image")
    tflite = next((armv7l_bundle[0] / "wheels").glob("tflite_runtime-*.whl"))
    elf_from_wheel(tflite, ".so", root / "usr/bin/python3")  # what 32-bit Raspberry Pi OS's python3 is built for
    result = offline(aarch64_bundle / "deploy/install.sh", "--root", root, "--wheelhouse", aarch64_bundle / "wheels",
                     "--first-boot", check=False)
    assert result.returncode == 1
    assert ("the wheelhouse is for aarch64 but the image's python3 is armv7l: build one with "
            "deploy/wheelhouse.sh --machine armv7l") in result.stderr
    assert not (root / "opt").exists() and account(root, "passwd", "edge-agent") is None


def test_what_the_board_runs_at_first_boot_installs_from_the_staged_bundle(tmp_path, native_bundle):
    """The first-boot flow end to end on this machine's own CPU: stage, then run the unit's command."""
    out, _ = native_bundle
    root = seeded_root(tmp_path / "image")
    python = Path(PYTHON_ARGS[1] if PYTHON_ARGS else "/usr/bin/python3").resolve()
    (root / "usr/bin").mkdir(parents=True)
    os.symlink(python, root / "usr/bin/python3")  # the image's python3 is this machine's here
    offline(out / "deploy/install.sh", "--root", root, "--wheelhouse", out / "wheels", "--first-boot")
    staged = root / "opt/edge-agent/bundle"
    # ExecStart= of edge-agent-firstboot.service, with --root since this is not the board
    result = offline("bash", staged / "deploy/install.sh", "--root", root, "--wheelhouse", staged / "wheels", *PYTHON_ARGS)
    print(result.stdout)
    assert (root / "opt/edge-agent/.installed").is_file(), "the unit's ConditionPathExists=! stops it from running again"
    assert run(root / "opt/edge-agent/venv/bin/edge-agent", "--version").stdout.startswith("edge-agent ")
    assert stat.S_IMODE((root / "etc/edge-agent/mqtt_password").stat().st_mode) == 0o600
