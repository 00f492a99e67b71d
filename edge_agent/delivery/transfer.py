"""Reassemble a pushed bundle from its chunks into `{state_dir}/incoming/{transfer_id}.part`.

Chunks may arrive in any order and more than once (a resend after a broker blip); each is
written at its own offset. A chunk is kept only when its index, size and SHA-256 are the ones
the begin listed: anything else (a stray or forged chunk from someone else on the broker)
raises StrayChunk, which the caller drops without failing the transfer. Every other problem
raises TransferError whose message is the reason the pusher sees; the caller then calls
`discard()`, so no temporary file outlives a failure.

Only progress keeps a transfer alive: a chunk not received before (`idle_s` counts from the
last one). A re-sent begin or end does not, so nobody can hold the board's transfer slot by
repeating messages.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

from edge_agent.delivery.update_protocol import PushBegin, chunk_length
from edge_agent.errors import EdgeAgentError

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"
HASH_BLOCK_BYTES = 1 << 20
MB = 1024 * 1024


class TransferError(EdgeAgentError):
    """The transfer cannot go on; str(err) is the reason reported to the pusher."""


class StrayChunk(TransferError):
    """A chunk that is not one of this transfer's (wrong index, size or content): dropped, the transfer goes on."""


class Transfer:
    """One incoming bundle: which chunks arrived, where they are written, when the last one came."""

    def __init__(self, begin: PushBegin, folder: Path, max_bytes: int):
        self.begin = begin
        self.path = folder / f"{begin.transfer_id}{PART_SUFFIX}"
        self.received: set[int] = set()
        self.started_mono = self.last_activity_mono = time.monotonic()
        self.signed = False  # set by the caller: whether the begin was signed by a trusted key
        self._digests = begin.chunk_digests()
        if begin.size > max_bytes:
            raise TransferError(f"the bundle is {begin.size / MB:.1f} MB; this device accepts at most "
                                f"{max_bytes / MB:.1f} MB (models.max_mb)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(folder).free
        except OSError as err:
            raise TransferError(disk_problem(err, folder)) from err
        if free < begin.size:
            raise TransferError(f"not enough disk space in {folder}: the bundle needs {begin.size / MB:.1f} MB, "
                                f"{free / MB:.1f} MB are free")
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as err:
            raise TransferError(disk_problem(err, self.path)) from err

    @property
    def transfer_id(self) -> str:
        return self.begin.transfer_id

    def write_chunk(self, index: int, data: bytes) -> bool:
        """Write chunk `index` at its offset; True when it was new (a resent chunk is checked and skipped).
        StrayChunk when it is not this transfer's."""
        begin = self.begin
        if index >= begin.chunks:
            raise StrayChunk(f"chunk {index} is out of range: transfer {begin.transfer_id} has {begin.chunks} "
                             f"chunks (0 to {begin.chunks - 1})")
        expected = chunk_length(index, begin.size, begin.chunk_size)
        if len(data) != expected:
            raise StrayChunk(f"chunk {index} holds {len(data)} bytes; it must hold {expected} "
                             f"(size {begin.size}, chunk_size {begin.chunk_size})")
        if self._digests and hashlib.sha256(data).digest() != self._digests[index]:
            raise StrayChunk(f"chunk {index} of transfer {begin.transfer_id} is not the one its begin lists "
                             "(SHA-256 differs)")
        if index in self.received:
            return False
        view = memoryview(data)
        offset = index * begin.chunk_size
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as err:
            raise TransferError(disk_problem(err, self.path)) from err
        self.received.add(index)
        self.last_activity_mono = time.monotonic()
        return True

    def missing(self) -> list[int]:
        return [index for index in range(self.begin.chunks) if index not in self.received]

    def idle_s(self, now_mono: float | None = None) -> float:
        return (time.monotonic() if now_mono is None else now_mono) - self.last_activity_mono

    def complete(self) -> Path:
        """Flush to disk and check size and SHA-256; the file's path when they match."""
        try:
            os.fsync(self._fd)
            size = os.fstat(self._fd).st_size
            os.close(self._fd)
            self._fd = None
            digest = hashlib.sha256()
            with open(self.path, "rb") as handle:
                while block := handle.read(HASH_BLOCK_BYTES):
                    digest.update(block)
        except OSError as err:
            raise TransferError(disk_problem(err, self.path)) from err
        if size != self.begin.size:
            raise TransferError(f"the received file has {size} bytes, the pusher announced {self.begin.size}")
        if digest.hexdigest() != self.begin.sha256:
            raise TransferError(f"the SHA-256 of the received bytes is {digest.hexdigest()[:16]}…, the pusher announced "
                                f"{self.begin.sha256[:16]}…: the bundle was damaged in transit or the pusher is wrong; push it again")
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary file (safe to call more than once)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        try:
            self.path.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("cannot remove %s: %s", self.path, err.strerror)


def disk_problem(err: OSError, path: Path) -> str:
    """A reason for the pusher that says what the disk refused and what to do."""
    if err.errno == errno.ENOSPC:
        return f"the disk is full: writing {path} failed ({err.strerror}); free space under the state directory"
    if err.errno == errno.EDQUOT:
        return f"the disk quota is exhausted: writing {path} failed ({err.strerror}); raise the quota or free space"
    if err.errno == errno.EFBIG:
        return f"the file system refused to grow {path} ({err.strerror}): the disk or a file-size limit is exhausted"
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path} ({err.strerror}): the state directory must be writable by the agent"
    return f"cannot write {path}: {err.strerror or err}"


def remove_leftovers(folder: Path) -> int:
    """Delete `.part` files a power cut or crash left behind; how many were removed."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.glob(f"*{PART_SUFFIX}"):
        try:
            path.unlink()
            removed += 1
        except OSError as err:
            logger.warning("cannot remove the unfinished transfer %s: %s", path, err.strerror)
    return removed
