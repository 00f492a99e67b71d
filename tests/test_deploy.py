"""deploy/wheelhouse.sh and deploy/install.sh for real, without the network: wheelhouses built
with --no-index from the wheels `make test-wheels` fetched from the index at install time, installs
into throwaway roots (never the host's /etc) in a network namespace with no network."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from support import REPO, local_wheels, run_offline

INSTALL = REPO / "deploy" / "install.sh"
WHEELHOUSE = REPO / "deploy" / "wheelhouse.sh"
MACHINE = platform.machine()


def _installer_python() -> list[str]:
    """install.sh defaults to /usr/bin/python3, as on a board; where that cannot make venvs (no
    python3-venv), or is not the Python version the local wheels are for (this venv's), the tests
    hand it the interpreter behind their own venv."""
    check = f"import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])})"
    if Path("/usr/bin/python3").exists() and subprocess.run(["/usr/bin/python3", "-c", check]).returncode == 0:
        return []
    return ["--python", sys._base_executable]


PYTHON_ARGS = _installer_python()
TARGET_PYTHON = PYTHON_ARGS[1] if PYTHON_ARGS else "/usr/bin/python3"
TARGET_PY_VERSION = subprocess.run([TARGET_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                   capture_output=True, text=True, check=True).stdout.strip()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="install.sh creates users and root-owned files: run as root (the CI container is)"),
]


def run(*args: str | Path, env: dict | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    print(f"$ {' '.join(str(a) for a in args)}  ({time.monotonic() - started:.1f} s, exit {result.returncode})")
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def offline(*args: str | Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """No network, no pip settings of this machine: an "offline" step can only use local wheels."""
    return run_offline(*args, check=check, env=env)


def offline_pip_env() -> dict[str, str]:
    """For install.sh without --wheelhouse: pip takes the dependencies (and, to build the wheel,
    setuptools and wheel) from the local wheels instead of the index."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(local_wheels("native"))}


def wheel_sources(*kinds: str) -> list[str]:
    """wheelhouse.sh options for an offline build from the local wheels."""
    return ["--no-index", *[arg for kind in kinds for arg in ("--find-links", str(local_wheels(kind)))]]


def seeded_root(path: Path) -> Path:
    """A root with the account files a Debian image has, so useradd --prefix has something to edit."""
    (path / "etc").mkdir(parents=True)
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")  # video exists, dialout/plugdev do not
    (path / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (path / "etc/gshadow").write_text("root:*::\nvideo:!::\n")
    for name in ("shadow", "gshadow"):
        (path / "etc" / name).chmod(0o600)
    return path


def account(root: Path, kind: str, name: str) -> list[str] | None:
    for line in (root / "etc" / kind).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    return None


def host_accounts_digest() -> str:
    return hashlib.sha256(b"".join(Path(f"/etc/{n}").read_bytes() for n in ("passwd", "group", "shadow", "gshadow"))).hexdigest()


def copy_tree(destination: Path) -> Path:
    """The parts of the repository install.sh uses, so a test can change the source freely."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    for name in ("edge_agent", "deploy", "systemd"):
        shutil.copytree(REPO / name, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return destination


@pytest.fixture(scope="module")
def native_wheelhouse(tmp_path_factory) -> Path:
    """A bundle for THIS machine (same script, --machine `uname -m`), so it can be installed here."""
    out = tmp_path_factory.mktemp("bundle") / f"edge-agent-{MACHINE}"
    offline(WHEELHOUSE, "--machine", MACHINE, "--python-version", TARGET_PY_VERSION, "--out", out, "--python", sys.executable,
            *wheel_sources("native"))
    return out


@pytest.fixture(scope="module")
def aarch64_wheelhouse(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("bundle") / "edge-agent-aarch64"
    started = time.monotonic()
    # native too: setuptools and wheel build edge-agent's own wheel on this machine
    result = offline(WHEELHOUSE, "--out", out, "--python", sys.executable, *wheel_sources("aarch64", "native"))
    print(result.stdout)
    return out, time.monotonic() - started


def test_aarch64_wheelhouse_has_every_device_requirement(aarch64_wheelhouse):
    out, seconds = aarch64_wheelhouse
    print(f"aarch64 wheelhouse built in {seconds:.1f} s")
    wheels = out / "wheels"
    names = sorted(p.name for p in wheels.glob("*.whl"))
    manifest = (wheels / "manifest.txt").read_text()
    assert "machine: aarch64" in manifest and "python-version: 3.11" in manifest
    for pattern in (r"ai_edge_litert-2\.\d+\.\d+-cp311-cp311-manylinux_2_27_aarch64\.whl",
                    r"tflite_runtime-2\.14\.0-cp311-cp311-manylinux_2_34_aarch64\.whl",
                    r"numpy-1\.26\.\d+-cp311-cp311-.*aarch64.*\.whl",
                    r"opencv_python_headless-4\.11\.0\.86-.*aarch64.*\.whl",
                    r"paho_mqtt-2\.", r"pyserial-3\.", r"cryptography-", r"edge_agent-0\.\d+\.\d+-py3-none-any\.whl"):
        assert any(re.match(pattern, name) for name in names), f"no wheel matches {pattern}: {names}"
    assert not [n for n in names if n.startswith(("tensorflow", "tf_"))], "TensorFlow never goes on the board"
    assert not [n for n in names if "x86_64" in n]
    assert subprocess.run(["sha256sum", "--quiet", "--strict", "-c", "SHA256SUMS"], cwd=wheels).returncode == 0
    for path in ("deploy/install.sh", "deploy/agent.example.toml", "systemd/edge-agent.service"):
        assert (out / path).is_file(), f"the bundle lacks {path}"
    assert os.access(out / "deploy/install.sh", os.X_OK)
    # the demo files travel inside edge-agent's own wheel (install.sh copies them from the package)
    (own,) = wheels.glob("edge_agent-*.whl")
    with zipfile.ZipFile(own) as wheel:
        assert "edge_agent/data/demo/digits_int8.tflite" in wheel.namelist()
    assert not (out / "models").exists(), "the demo files are the package's, not the bundle's"


def test_wheelhouse_names_the_requirement_without_a_board_wheel(tmp_path):
    """riscv64 has no manylinux numpy 1.26 or OpenCV 4.11 wheels (armv7l takes those from apt:
    test_installer_targets.py), and the local wheels have none either; the message names what is
    missing and where it looked."""
    result = offline(WHEELHOUSE, "--machine", "riscv64", "--out", tmp_path / "b", "--python", sys.executable,
                     *wheel_sources("aarch64", "native"), check=False)
    assert result.returncode != 0
    assert "no wheel on the index for CPython 3.11 on riscv64" in result.stderr
    assert f"(looked only in --find-links {local_wheels('aarch64')} {local_wheels('native')})" in result.stderr
    assert "opencv-python-headless==4.11.0.86" in result.stderr.splitlines()[-1]


def test_wheelhouse_no_index_needs_a_find_links_folder(tmp_path):
    result = run(WHEELHOUSE, "--no-index", "--out", tmp_path / "b", "--python", sys.executable, check=False)
    assert result.returncode == 1 and "--no-index needs --find-links DIR" in result.stderr
    assert not (tmp_path / "b").exists(), "nothing is written before the options are checked"


def test_check_rejects_a_wheel_for_the_wrong_machine(tmp_path, aarch64_wheelhouse):
    out, _ = aarch64_wheelhouse
    folder = tmp_path / "wheels"
    shutil.copytree(out / "wheels", folder)
    next(folder.glob("numpy-*.whl")).unlink()
    (folder / "pyserial-3.5-py2.py3-none-any.whl").unlink()
    (folder / "cffi-1.17.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl").write_bytes(b"")
    result = run(sys.executable, REPO / "deploy/wheelhouse.py", "check", folder, check=False)
    assert result.returncode == 1
    assert "missing: numpy<2,>=1.26" in result.stderr
    assert "missing: pyserial>=3.5" in result.stderr
    assert "cffi-1.17.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl: not for CPython 3.11 on aarch64" in result.stderr


def test_offline_install_into_a_root_then_again_then_uninstall(tmp_path, native_wheelhouse):
    root = seeded_root(tmp_path / "root")
    host_accounts = host_accounts_digest()
    bundle_install = native_wheelhouse / "deploy" / "install.sh"

    first = offline(bundle_install, "--root", root, "--wheelhouse", native_wheelhouse / "wheels", *PYTHON_ARGS)
    print(first.stdout)
    venv = root / "opt/edge-agent/venv"
    version = run(venv / "bin/edge-agent", "--version").stdout.strip()
    assert re.fullmatch(r"edge-agent \d+\.\d+\.\d+", version)
    assert "tflite-runtime" in run(venv / "bin/python", "-m", "pip", "list").stdout
    assert (root / "opt/edge-agent/models/demo/digits_int8.tflite").is_file()
    unit = root / "etc/systemd/system/edge-agent.service"
    assert unit.read_text() == (REPO / "systemd/edge-agent.service").read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge-agent.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edge-agent.service"

    # the user and its groups went into the root's account files, not the host's
    user = account(root, "passwd", "edge-agent")
    assert user and user[5] == "/var/lib/edge-agent" and user[6] == "/usr/sbin/nologin"
    for group in ("video", "dialout", "plugdev"):
        assert "edge-agent" in account(root, "group", group)[3].split(","), group
    assert account(root, "group", "video")[2] == "44", "an existing group is reused, not recreated"
    assert host_accounts_digest() == host_accounts

    config = root / "etc/edge-agent/agent.toml"
    assert config.read_text() == (REPO / "deploy/agent.example.toml").read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o640 and config.stat().st_gid == int(account(root, "group", "edge-agent")[2])
    password = root / "etc/edge-agent/mqtt_password"
    assert password.read_bytes() == b"" and stat.S_IMODE(password.stat().st_mode) == 0o600 and password.stat().st_uid == 0

    # the installed config is valid and names files the installer put in place
    staged = tmp_path / "agent.toml"
    staged.write_text(config.read_text().replace("/opt/edge-agent/", f"{root}/opt/edge-agent/"))
    assert "OK (1 pipeline(s)" in run(venv / "bin/edge-agent", "check-config", staged).stdout

    # the installed unit verifies with its ExecStart pointing into the root's venv
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: `make test` installs the systemd package"
    checked = tmp_path / "verify" / "edge-agent.service"
    checked.parent.mkdir()
    checked.write_text(unit.read_text().replace("ExecStart=/opt/edge-agent/", f"ExecStart={root}/opt/edge-agent/"))
    result = run("systemd-analyze", "verify", checked, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stderr

    # second run: your config survives, nothing else changes, and it says so
    config.write_text(config.read_text().replace('log_level = "info"', 'log_level = "debug"'))
    second = offline(bundle_install, "--root", root, "--wheelhouse", native_wheelhouse / "wheels", *PYTHON_ARGS)
    print(second.stdout)
    assert "nothing to change" in second.stdout
    assert not [line for line in second.stdout.splitlines() if line.startswith("  + ")]
    assert 'log_level = "debug"' in config.read_text()

    # uninstall keeps config and state; a second uninstall has nothing to do; --purge removes them
    (root / "var/lib/edge-agent").mkdir(parents=True)
    removed = run(INSTALL, "--uninstall", "--root", root)
    print(removed.stdout)
    assert not unit.exists() and not wants.exists() and not (root / "opt/edge-agent").exists()
    assert account(root, "passwd", "edge-agent") is None and account(root, "group", "edge-agent") is None
    assert config.is_file() and (root / "var/lib/edge-agent").is_dir()
    assert "nothing to remove" in run(INSTALL, "--uninstall", "--root", root).stdout
    run(INSTALL, "--uninstall", "--purge", "--root", root)
    assert not (root / "etc/edge-agent").exists() and not (root / "var/lib/edge-agent").exists()
    assert host_accounts_digest() == host_accounts


def test_install_from_a_source_tree_reinstalls_only_when_it_changed(tmp_path):
    """The default (--from this repository; pip reaches the dependencies through PIP_* here, the
    index on a board): the tree is built into a wheel and that is installed, not the tree and
    not editable; a changed source file replaces the code even though the version number
    stayed the same."""
    (tmp_path / "tree").mkdir()
    tree = copy_tree(tmp_path / "tree")
    root = tmp_path / "root"  # bare: no account files, so no user (and a note saying so)
    first = offline(tree / "deploy/install.sh", "--root", root, *PYTHON_ARGS, env=offline_pip_env())
    print(first.stdout)
    assert "user edge-agent not created" in first.stdout
    venv_python = root / "opt/edge-agent/venv/bin/python"
    assert run(root / "opt/edge-agent/venv/bin/edge-agent", "--version").returncode == 0
    installed = run(venv_python, "-I", "-c", "import edge_agent, edge_agent.data as d; print(edge_agent.__file__); print(d.demo_dir())").stdout
    site = str(root / "opt/edge-agent/venv/lib")
    assert all(line.startswith(site) for line in installed.splitlines()), f"not installed as a wheel into the venv: {installed}"
    assert not list((root / "opt/edge-agent/venv/lib").glob("python3*/site-packages/__editable__*")), "installed editable"
    demo = root / "opt/edge-agent/models/demo"
    # the files, not the detector's evaluation set (a folder, for `edge-agent evaluate`)
    assert sorted(p.name for p in demo.iterdir()) == sorted(p.name for p in (REPO / "edge_agent/data/demo").iterdir() if p.is_file())
    assert "nothing to change" in offline(tree / "deploy/install.sh", "--root", root, *PYTHON_ARGS, env=offline_pip_env()).stdout

    init = tree / "edge_agent" / "__init__.py"
    init.write_text(init.read_text() + "\nINSTALLED_FROM_THE_CHANGED_TREE = True\n")
    third = offline(tree / "deploy/install.sh", "--root", root, *PYTHON_ARGS, env=offline_pip_env())
    assert re.search(r"^  \+ edge-agent .* in the venv", third.stdout, re.M), third.stdout
    probe = "import edge_agent; print(edge_agent.INSTALLED_FROM_THE_CHANGED_TREE)"
    # -I: not the repository's edge_agent from the working directory, the venv's
    assert run(venv_python, "-I", "-c", probe).stdout.strip() == "True"


def test_picamera2_on_the_system_python_gives_the_venv_system_site_packages(tmp_path, native_wheelhouse):
    root = tmp_path / "root"
    wheels = native_wheelhouse / "wheels"
    offline(INSTALL, "--root", root, "--wheelhouse", wheels, *PYTHON_ARGS)
    cfg = root / "opt/edge-agent/venv/pyvenv.cfg"
    assert "include-system-site-packages = false" in cfg.read_text()
    # Stand-in for apt's python3-picamera2, visible to the system python only through PYTHONPATH.
    fake = tmp_path / "dist-packages" / "picamera2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    result = offline(INSTALL, "--root", root, "--wheelhouse", wheels, *PYTHON_ARGS, env={"PYTHONPATH": str(fake.parent)})
    assert "system site-packages now: yes" in result.stdout
    assert "include-system-site-packages = true" in cfg.read_text()


def test_a_damaged_or_foreign_wheelhouse_is_refused(tmp_path, native_wheelhouse, aarch64_wheelhouse):
    damaged = tmp_path / "wheels"
    shutil.copytree(native_wheelhouse / "wheels", damaged)
    wheel = next(damaged.glob("paho_mqtt-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-100])
    result = offline(INSTALL, "--root", tmp_path / "root", "--wheelhouse", damaged, *PYTHON_ARGS, check=False)
    assert result.returncode == 1 and "is damaged (SHA256SUMS does not match): copy it again" in result.stderr

    if MACHINE != "aarch64":
        out, _ = aarch64_wheelhouse
        result = offline(INSTALL, "--root", tmp_path / "root2", "--wheelhouse", out / "wheels", *PYTHON_ARGS, check=False)
        assert result.returncode == 1
        assert f"the wheelhouse is for aarch64 but {TARGET_PYTHON} is {MACHINE}: build one with" in result.stderr
        assert not (tmp_path / "root2" / "opt").exists(), "refused before anything was installed"
