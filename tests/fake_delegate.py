"""Build tests/delegate/fake_delegate.c with the system C compiler into a real external delegate,
also under the Edge TPU's soname (libedgetpu.so.1), so loading and running through a delegate is
tested with both runtimes without a Coral."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).parent / "delegate" / "fake_delegate.c"


@dataclass(frozen=True)
class FakeDelegate:
    path: Path           # libfake_delegate.so
    edgetpu_dir: Path    # holds the same library as libedgetpu.so.1 (put it on LD_LIBRARY_PATH)

    @property
    def edgetpu_path(self) -> Path:
        return self.edgetpu_dir / "libedgetpu.so.1"

    def library(self, path: Path | None = None) -> ctypes.CDLL:
        """The loaded library (the same handle the runtime got: dlopen counts references)."""
        lib = ctypes.CDLL(str(path or self.path))
        for name in ("fake_delegate_invocations", "fake_delegate_claimed", "fake_delegate_created", "fake_delegate_destroyed"):
            getattr(lib, name).restype = ctypes.c_long
        lib.fake_delegate_options.restype = ctypes.c_char_p
        return lib


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def build_fake_delegate(folder: Path) -> FakeDelegate:
    """Compile the delegate into `folder` (a real shared library, -Werror: the ABI declarations are checked)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH: apt-get install gcc")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "libfake_delegate.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-o", str(path), str(SOURCE), "-lm"],
                   check=True, capture_output=True, text=True)
    edgetpu_dir = folder / "edgetpu"
    edgetpu_dir.mkdir(exist_ok=True)
    shutil.copy2(path, edgetpu_dir / "libedgetpu.so.1")
    return FakeDelegate(path, edgetpu_dir)


def build_numpy1_extension(folder: Path) -> Path | None:
    """tests/numpy1_extension/simplejpeg.c built against this venv's numpy (1.x) headers; None
    when there is no compiler or no Python.h (python3-dev)."""
    import sysconfig

    import numpy

    cc = compiler()
    include = sysconfig.get_paths()["include"]
    if cc is None or not (Path(include) / "Python.h").exists():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"simplejpeg{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-I{include}", f"-I{numpy.get_include()}", "-o", str(out),
                    str(Path(__file__).parent / "numpy1_extension" / "simplejpeg.c")], check=True, capture_output=True, text=True)
    return out
