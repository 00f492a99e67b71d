"""The wheelhouse's bookkeeping for deploy/wheelhouse.sh: which requirements a board needs, and
whether a folder of wheels satisfies them.

  python3 deploy/wheelhouse.py requirements --machine aarch64 --python-version 3.11
      prints the device requirements (pyproject.toml's [project] dependencies plus the
      tflite-runtime extra), with environment markers decided for the target board rather than
      for this workstation (pip download --platform would evaluate them for this machine).
  python3 deploy/wheelhouse.py system-packages --machine armv7l
      prints the Debian packages the target takes from apt instead of wheels (one line; empty
      for aarch64 and x86_64). For armv7l (32-bit Raspberry Pi OS) PyPI has no numpy 1.x,
      OpenCV or cffi wheels: Debian's python3-numpy (1.24), python3-opencv (4.6) and
      python3-cffi (1.15) stand in, seen through a venv with system site-packages, and the
      wheels are fetched without their dependencies (the requirements list is the whole set).
  python3 deploy/wheelhouse.py check DIR --machine aarch64 --python-version 3.11
      fails naming every requirement (and the edge-agent wheel itself) that no wheel in DIR
      satisfies, and every wheel that cannot run on the target; then writes DIR/manifest.txt,
      DIR/requirements.txt (what install.sh installs there) and DIR/SHA256SUMS.

Standard library plus `packaging` (pip's own copy when the distribution is not installed).
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
import tomllib
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
DEVICE_EXTRAS = ("tflite-runtime",)
# The board never runs TensorFlow (it is the workstation's, in the "host" extra); a wheelhouse
# that carries it is a mistake costing hundreds of megabytes.
FORBIDDEN = ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-io-gcs-filesystem")
MANYLINUX = ("manylinux_2_17", "manylinux_2_27", "manylinux_2_28", "manylinux_2_31", "manylinux_2_34", "manylinux2014")
# What a target takes from apt instead of a wheel (None), or the requirement it needs instead.
# armv7l: cryptography 46+ needs cffi >= 2, which has no armv7l wheel; 44/45 accept Debian's 1.15.
TARGET_REQUIREMENTS: dict[str, dict[str, str | None]] = {
    "armv7l": {"numpy": None, "opencv-python-headless": None, "cryptography": "cryptography>=42,<46"},
}
SYSTEM_PACKAGES = {"armv7l": ("python3-numpy", "python3-opencv", "python3-cffi")}


def platforms(machine: str) -> list[str]:
    """The wheel platform tags a Debian 12 / Raspberry Pi OS bookworm board (glibc 2.36) runs."""
    return [f"{tag}_{machine}" for tag in MANYLINUX]


def target_environment(machine: str, python_version: str) -> dict[str, str]:
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_version": f"{python_version}.0",
        "platform_release": "",
        "platform_version": "",
    }


def device_requirements(pyproject: Path, machine: str, python_version: str) -> list[Requirement]:
    """[project] dependencies plus the device extras, markers evaluated for the target, markers dropped."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project.get("dependencies", []))
    for extra in DEVICE_EXTRAS:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    environment = target_environment(machine, python_version)
    requirements = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        if canonicalize_name(requirement.name) in FORBIDDEN:
            raise SystemExit(f"wheelhouse: {line!r} is a device requirement, but TensorFlow never goes on the board")
        overrides = TARGET_REQUIREMENTS.get(machine, {})
        if canonicalize_name(requirement.name) in overrides:
            replacement = overrides[canonicalize_name(requirement.name)]
            if replacement is None:
                continue  # from apt on this target (system_packages)
            requirement = Requirement(replacement)
        requirement.marker = None
        requirements.append(requirement)
    return requirements


def system_packages(machine: str) -> tuple[str, ...]:
    """The Debian packages a board of this machine provides instead of wheels."""
    return SYSTEM_PACKAGES.get(machine, ())


def _wheel_runs_on(tags, machine: str, python_version: str) -> bool:
    """True when one of the wheel's tags suits CPython `python_version` on `machine`'s manylinux."""
    cp = "cp" + python_version.replace(".", "")
    minor = int(python_version.split(".")[1])
    interpreters = {cp, "py3", f"py{python_version.replace('.', '')}", *(f"cp3{m}" for m in range(2, minor + 1))}
    wanted_platforms = {"any", *platforms(machine)}
    for tag in tags:
        if tag.platform not in wanted_platforms or tag.interpreter not in interpreters:
            continue
        if tag.abi in ("none", cp) or (tag.abi == "abi3" and tag.interpreter.startswith("cp3")):
            return True
    return False


def check(folder: Path, requirements: list[Requirement], machine: str, python_version: str) -> list[str]:
    """Every problem with `folder` as a wheelhouse for the target, one line each (empty: fine)."""
    wheels = {}
    problems = []
    for path in sorted(folder.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(path.name)
        wheels.setdefault(name, []).append((version, path))
        if name in FORBIDDEN:
            problems.append(f"{path.name}: TensorFlow does not belong in a device wheelhouse")
        if not _wheel_runs_on(tags, machine, python_version):
            problems.append(f"{path.name}: not for CPython {python_version} on {machine} manylinux (wrong --platform?)")
    for requirement in requirements:
        found = [v for v, _ in wheels.get(canonicalize_name(requirement.name), []) if requirement.specifier.contains(v, prereleases=True)]
        if not found:
            have = ", ".join(str(v) for v, _ in wheels.get(canonicalize_name(requirement.name), [])) or "none"
            problems.append(f"missing: {requirement} (wheels of {requirement.name} here: {have})")
    return problems


def write_manifest(folder: Path, requirements: list[Requirement], machine: str, python_version: str) -> None:
    """manifest.txt for people and install.sh (machine, python-version); SHA256SUMS for `sha256sum -c`."""
    sums = []
    rows = []
    for path in sorted(folder.glob("*.whl")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sums.append(f"{digest}  {path.name}")
        name, version, _, _ = parse_wheel_filename(path.name)
        rows.append(f"  {name}=={version}  {path.name}  {path.stat().st_size // 1024} KiB")
    header = [
        "# edge-agent wheelhouse: install on the board with deploy/install.sh --wheelhouse DIR",
        f"machine: {machine}",
        f"python-version: {python_version}",
        f"platforms: {' '.join(platforms(machine))}",
        f"system-packages: {' '.join(system_packages(machine))}",
        f"built: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} on {platform.machine()} with Python {platform.python_version()}",
        "requirements:",
        *(f"  {r}" for r in requirements),
        "wheels:",
    ]
    (folder / "manifest.txt").write_text("\n".join(header + rows) + "\n")
    # install.sh installs these with --no-deps where the target takes packages from apt
    (folder / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("requirements", "check", "system-packages"):
        command = commands.add_parser(name)
        command.add_argument("--machine", default="aarch64")
        command.add_argument("--python-version", default="3.11")
        command.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
        if name == "check":
            command.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "system-packages":
        print(" ".join(system_packages(args.machine)))
        return 0
    requirements = device_requirements(args.pyproject, args.machine, args.python_version)
    if args.command == "requirements":
        print("\n".join(str(r) for r in requirements))
        return 0
    project = tomllib.loads(args.pyproject.read_text(encoding="utf-8"))["project"]["name"]
    problems = check(args.folder, [Requirement(project), *requirements], args.machine, args.python_version)
    if problems:
        print(f"wheelhouse: {args.folder} is not complete for CPython {args.python_version} on {args.machine}:", file=sys.stderr)
        print("\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1
    write_manifest(args.folder, requirements, args.machine, args.python_version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
