"""Reading the members of a bundle's zip archive with bounded work, before anything in it is trusted.

A zip archive can make its reader do far more work than its size suggests: a central directory
with a million entries, a member whose deflate stream inflates a thousandfold (a "zip bomb"), a
member that declares one size and inflates to another. So, before `zipfile` parses anything:

  - the end-of-central-directory record is read first, and the archive refused unless it lists
    at most MAX_ENTRIES members in a central directory of at most MAX_CENTRAL_DIRECTORY_BYTES
    (no ZIP64: a bundle never needs it);
  - each member's declared size is checked against its cap before a byte of it is inflated;
  - members are inflated in blocks of READ_BLOCK_BYTES, and reading stops at the declared size
    and at the caller's cap, whichever is smaller (zipfile never returns more than the declared
    size; a stream that is longer or shorter fails its CRC);
  - a damaged deflate stream (zlib's "Error -3 while decompressing data") is reported naming the
    member and what to do.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from edge_agent.errors import InputError

MAX_ENTRIES = 8
MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024
READ_BLOCK_BYTES = 1 << 20
ZIP_MAGIC = b"PK\x03\x04"
_END_RECORD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_END_RECORD_BYTES = 22
_MAX_COMMENT_BYTES = 0xFFFF
COMPRESSION_NAMES = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


class ArchiveError(InputError, ValueError):
    """The archive or one of its members cannot be read within the bounds; str(err) says why and what to do."""


def open_archive(source: Path | bytes, label: str, max_file_bytes: int) -> tuple[zipfile.ZipFile, BinaryIO]:
    """The archive, opened after its size and central directory passed the bounds; the caller closes both."""
    handle: BinaryIO
    if isinstance(source, (bytes, bytearray, memoryview)):
        handle = io.BytesIO(source)
    else:
        handle = open(source, "rb")
    try:
        size = handle.seek(0, os.SEEK_END)
        if size > max_file_bytes:
            raise ArchiveError(f"{label} is {size / 1048576:.1f} MB; at most {max_file_bytes / 1048576:.1f} MB are "
                               "accepted here (models.max_mb)")
        handle.seek(0)
        if handle.read(4) != ZIP_MAGIC:
            raise ArchiveError(f"{label} is not a zip archive")
        _check_central_directory(handle, size, label)
        handle.seek(0)
        try:
            return zipfile.ZipFile(handle), handle
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
            raise ArchiveError(f"{label} is damaged or truncated ({err}): copy the bundle again") from None
    except BaseException:
        handle.close()
        raise


def _check_central_directory(handle: BinaryIO, size: int, label: str) -> None:
    tail_bytes = min(size, _END_RECORD_BYTES + _MAX_COMMENT_BYTES)
    handle.seek(size - tail_bytes)
    tail = handle.read(tail_bytes)
    at = tail.rfind(_END_RECORD)
    if at < 0 or len(tail) - at < _END_RECORD_BYTES:
        raise ArchiveError(f"{label} is damaged or truncated (no end of the zip directory): copy the bundle again")
    disk, cd_disk, disk_entries, entries, cd_bytes, cd_offset, _ = struct.unpack("<HHHHIIH", tail[at + 4: at + 22])
    if at >= 20 and tail[at - 20: at - 16] == _ZIP64_LOCATOR:
        raise ArchiveError(f"{label} is a ZIP64 archive; a bundle is an ordinary zip: make it with "
                           "`edge-agent bundle create`")
    if disk or cd_disk or disk_entries != entries:
        raise ArchiveError(f"{label} is a multi-part zip archive, not a bundle")
    if entries > MAX_ENTRIES or cd_bytes > MAX_CENTRAL_DIRECTORY_BYTES:
        raise ArchiveError(f"{label} lists {entries} members in a directory of {cd_bytes:,} bytes; a bundle has at "
                           f"most {MAX_ENTRIES}: it is not a bundle (make one with `edge-agent bundle create`)")


def check_members(archive: zipfile.ZipFile, caps: dict[str, int], label: str) -> dict[str, zipfile.ZipInfo]:
    """The members by name after checking names (only those in `caps`, each once), compression
    (stored or deflated, no zip encryption) and declared sizes against `caps`."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    unknown = sorted(set(names) - set(caps))
    if unknown or len(names) != len(set(names)):
        shown = ", ".join(repr(n[:64]) for n in (unknown or sorted(names))[:MAX_ENTRIES])
        raise ArchiveError(f"{label}: unexpected bundle members [{shown}]; a bundle holds only "
                           f"{', '.join(caps)} (each once): make it again with `edge-agent bundle create`")
    for info in infos:
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{label}: {info.filename} uses zip encryption, which bundles never do")
        if info.compress_type not in COMPRESSION_NAMES:
            raise ArchiveError(f"{label}: {info.filename} is compressed with method {info.compress_type}; bundles "
                               "use stored or deflated members: make it again with `edge-agent bundle create`")
        if info.file_size > caps[info.filename]:
            raise ArchiveError(f"{label}: {info.filename} declares {info.file_size:,} bytes; at most "
                               f"{caps[info.filename]:,} are accepted")
    return {info.filename: info for info in infos}


def stream_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap_bytes: int, label: str,
                  block_bytes: int = READ_BLOCK_BYTES) -> Iterator[bytes]:
    """The member's bytes in blocks, never more than min(declared size, cap_bytes) in total."""
    limit = min(info.file_size, cap_bytes)
    produced = 0
    try:
        with archive.open(info) as member:
            while True:
                block = member.read(min(block_bytes, limit - produced + 1))
                if not block:
                    break
                produced += len(block)
                if produced > limit:
                    raise ArchiveError(f"{label}: {info.filename} inflates past {limit:,} bytes (what it declares and "
                                       "what is accepted here): it is not a bundle edge-agent made; do not use it")
                yield block
    except zlib.error as err:
        raise ArchiveError(_damaged(label, info, f"its compressed data does not inflate: {err}")) from None
    except zipfile.BadZipFile as err:
        raise ArchiveError(_damaged(label, info, str(err))) from None
    except (EOFError, OSError, ValueError, NotImplementedError) as err:
        raise ArchiveError(_damaged(label, info, f"{type(err).__name__}: {err}")) from None


def _damaged(label: str, info: zipfile.ZipInfo, detail: str) -> str:
    return (f"{label}: the member {info.filename} ({COMPRESSION_NAMES.get(info.compress_type, '?')}, "
            f"{info.compress_size:,} bytes) is damaged ({detail}): the bundle was corrupted on disk or in transit; "
            "copy it again, or rebuild it with `edge-agent bundle create` (check it with `edge-agent bundle verify`)")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap_bytes: int, label: str,
                on_block: Callable[[bytes], None] | None = None) -> bytes:
    """The whole member (bounded as stream_member); `on_block` sees each block (e.g. a hash)."""
    blocks = []
    for block in stream_member(archive, info, cap_bytes, label):
        if on_block is not None:
            on_block(block)
        blocks.append(block)
    return b"".join(blocks)
