"""Write output files so that a reader sees either the old file, the whole new one, or none.

Every file the tools produce (models, bundles, keys, reports) goes through
`write_file_atomically`: the bytes go to a temporary file in the same folder, are
fsync'ed, and the temporary file is renamed over the target. A crash or an error
half-way leaves nothing at the target path.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DEFAULT_FILE_MODE = 0o666  # reduced by the umask, like open() does


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file_atomically(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write `data` to `path` via temp file + fsync + rename; `mode` is exact (e.g. 0o600) when given."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist; create it first")
    temp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    final_mode = mode if mode is not None else DEFAULT_FILE_MODE & ~_current_umask()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, final_mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_folder(folder)
    return path


def fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (not possible on every file system; best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
