"""Which libedgetpu is installed, which TensorFlow it was built from, and which runtime goes with it.

libedgetpu links TensorFlow Lite's own code and hands the runtime a TfLiteDelegate: a build made
from one TensorFlow release and a runtime from another can crash inside the interpreter (the
segfault Google's 2021 `libedgetpu1-std` 16.0 gives with recent runtimes). The pairing is decided
from facts on disk, never by loading anything:

- the library: the first `libedgetpu.so.1` in LD_LIBRARY_PATH, then the system's library folders
  (the dynamic loader's order);
- its TensorFlow version: the Debian package that owns it (`/var/lib/dpkg`). feranick's community
  builds say it in the version ("16.0tf2.17.1-1"); Google's last release, 16.0 (July 2021), was
  built from TensorFlow 2.5.0 (libedgetpu's workspace.bzl: "TF release 2.5.0 as of 05/17/2021");
- each runtime's TensorFlow version: tflite-runtime's version is the TensorFlow release it was cut
  from; LiteRT is built from TensorFlow's main branch and carries that version in its library.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import mmap
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from edge_agent.runtime.backends import RUNTIMES

EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
EDGETPU_PACKAGES = ("libedgetpu1-std", "libedgetpu1-max")  # Coral's and feranick's package names
LIBRARY_DIRS = ("/usr/lib/*-linux-gnu", "/lib/*-linux-gnu", "/usr/lib", "/lib", "/usr/local/lib")
GOOGLE_RELEASES_TF = {"16.0": "2.5.0"}  # libedgetpu's workspace.bzl at release-grouper
_TF_IN_VERSION = re.compile(r"tf(\d+\.\d+(?:\.\d+)?)", re.IGNORECASE)
# LiteRT's shared library holds TensorFlow's TF_VERSION_STRING, e.g. b"2.22.0-dev0+selfbuilt"
_TF_IN_LITERT = re.compile(rb"(?<![0-9.])(2\.\d{1,2}\.\d{1,2})(?:-(?:dev|rc)\d*)?\+selfbuilt\x00")
LITERT_LIBRARY = "libpywrap_litert_common.so"


@dataclass(frozen=True)
class EdgeTpuLibrary:
    """The installed libedgetpu: where it is and what it was built from ("" = not known)."""

    path: str
    package: str = ""
    version: str = ""
    tf_version: str = ""

    def describe(self) -> str:
        origin = f"{self.package} {self.version}" if self.package else "not from a Debian package"
        built = f"TensorFlow {self.tf_version}" if self.tf_version else "TensorFlow version unknown"
        return f"{self.path} ({origin}, {built})"


def library_name() -> str:
    return EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")


def tf_version_of_package(version: str) -> str:
    """The TensorFlow release a libedgetpu package version was built from, or ""."""
    match = _TF_IN_VERSION.search(version)
    if match:
        return match.group(1)
    return GOOGLE_RELEASES_TF.get(version.split("-")[0], "")


def find_edgetpu_library(root: Path = Path("/"), ld_library_path: str | None = None) -> EdgeTpuLibrary | None:
    """The libedgetpu the dynamic loader would pick under `root`, with its package, or None."""
    name = library_name()
    search = [d for d in (ld_library_path if ld_library_path is not None else os.environ.get("LD_LIBRARY_PATH", "")).split(":") if d]
    candidates = [Path(d) / name for d in search]  # LD_LIBRARY_PATH is the loader's own path, not under root
    for pattern in LIBRARY_DIRS:
        candidates += [Path(p) / name for p in sorted(glob.glob(str(_under(root, pattern))))]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        return None
    package, version = _owning_package(root, found)
    return EdgeTpuLibrary(str(found), package, version, tf_version_of_package(version) if version else "")


def runtime_tf_version(runtime: str) -> str:
    """The TensorFlow release `runtime` was built from ("" when it is not installed or does not say)."""
    if runtime == "tflite-runtime":
        try:
            return importlib.metadata.version("tflite-runtime")
        except importlib.metadata.PackageNotFoundError:
            return ""
    if runtime == "litert":
        spec = importlib.util.find_spec("ai_edge_litert")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            version = _tf_version_in_library(Path(folder) / LITERT_LIBRARY)
            if version:
                return version
    return ""


def same_release(a: str, b: str) -> bool:
    """True when two TensorFlow versions share MAJOR.MINOR (the delegate ABI follows the release)."""
    return bool(a and b) and a.split(".")[:2] == b.split(".")[:2]


def choose_edgetpu_runtime(available: list[str], library: EdgeTpuLibrary | None,
                           tf_versions: dict[str, str] | None = None) -> tuple[str, str]:
    """(runtime, why) for runtime = "auto" with the Edge TPU: the runtime built from the same
    TensorFlow release as libedgetpu; without one, tflite-runtime (what Coral's own releases pair
    libedgetpu with), else whatever is installed."""
    if not available:
        raise ValueError("no runtime is installed")
    versions = tf_versions if tf_versions is not None else {name: runtime_tf_version(name) for name in available}
    if library is not None and library.tf_version:
        matching = [name for name in available if same_release(versions.get(name, ""), library.tf_version)]
        if matching:
            name = matching[0]
            return name, (f"{name} {versions[name]} matches libedgetpu's TensorFlow {library.tf_version}")
        built = f"libedgetpu is built from TensorFlow {library.tf_version}"
    else:
        built = "libedgetpu's TensorFlow version is unknown" if library else "libedgetpu is not installed"
    name = "tflite-runtime" if "tflite-runtime" in available else available[0]
    have = ", ".join(f"{n} {versions.get(n) or '?'}" for n in available)
    return name, f"{built} and no installed runtime matches it ({have}): using {name}; `edge-agent doctor` says what to install"


def _tf_version_in_library(path: Path) -> str:
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            match = _TF_IN_LITERT.search(data)
            return match.group(1).decode() if match else ""  # before the map closes
    except (OSError, ValueError):
        return ""


def _under(root: Path, absolute: str) -> Path:
    return Path(absolute) if root == Path("/") else root / absolute.lstrip("/")


def _owning_package(root: Path, library: Path) -> tuple[str, str]:
    """(package, version) of the installed libedgetpu package whose file list names `library`
    (or the file its symlink points to); ("", "") for a library copied there by hand."""
    installed = _installed_packages(_under(root, "/var/lib/dpkg/status"), EDGETPU_PACKAGES)
    wanted = {_root_absolute(root, library), _root_absolute(root, Path(os.path.realpath(library)))} - {None}
    for package, version in installed.items():
        listings = glob.glob(str(_under(root, f"/var/lib/dpkg/info/{package}.list")))
        listings += glob.glob(str(_under(root, f"/var/lib/dpkg/info/{package}:*.list")))
        for listing in listings:
            try:
                entries = set(Path(listing).read_text(encoding="utf-8", errors="replace").splitlines())
            except OSError:
                continue
            if wanted & entries:
                return package, version
    return "", ""


def _root_absolute(root: Path, path: Path) -> str | None:
    """`path` as the absolute path a program inside `root` sees, or None when it is outside."""
    if root == Path("/"):
        return str(path)
    try:
        return "/" + str(Path(os.path.abspath(path)).relative_to(os.path.realpath(root)))
    except ValueError:
        try:
            return "/" + str(Path(os.path.abspath(path)).relative_to(os.path.abspath(root)))
        except ValueError:
            return None


def _installed_packages(status_file: Path, names: tuple[str, ...]) -> dict[str, str]:
    """{package: version} for `names` that dpkg's status file marks "install ok installed"."""
    try:
        text = status_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    found = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith(" "))
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if fields.get("Package") in names and fields.get("Status", "").endswith(" installed"):
            found[fields["Package"]] = fields.get("Version", "")
    return found


__all__ = [
    "EDGETPU_LIBRARY",
    "EdgeTpuLibrary",
    "RUNTIMES",
    "choose_edgetpu_runtime",
    "find_edgetpu_library",
    "library_name",
    "runtime_tf_version",
    "same_release",
    "tf_version_of_package",
]
