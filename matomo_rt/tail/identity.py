"""What makes a log file "the same file": its inode and a fingerprint of its first bytes.

The inode alone lies (inodes are reused after delete-and-recreate, and change when logrotate
compresses a generation); the head alone lies for empty files. Together, and with the head read
through decompression, they follow one generation of a log from `access.log` to
`access.log.1` to `access.log.2.gz`.
"""

from __future__ import annotations

import hashlib
import os
from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import BinaryIO, Optional

#: How many head bytes identify a file. Longer than one nginx line (so the timestamp and client
#: of the first request are in it), short enough to hash on every pass.
FINGERPRINT_BYTES = 1024

#: Compression suffix -> stdlib module with an `open`. Imported on first use: most passes read
#: no compressed file, and `matomo-rt tail` start-up time is part of every cron run.
_DECOMPRESSORS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def compression_of(name: str) -> Optional[str]:
    """The compression suffix a rotated file's name carries, if any."""
    for suffix in _DECOMPRESSORS:
        if name.endswith(suffix):
            return suffix
    return None


class IdentityChanged(Exception):
    """The name now belongs to another file than the one planned (a rotation in between)."""


def open_log(
    path: str, compression: Optional[str], expect: Optional[tuple[int, int]] = None
) -> BinaryIO:
    """Open a generation for reading its (decompressed) bytes.

    With `expect` = (st_dev, st_ino), the opened file must be that file: identity is taken from
    the open descriptor, so a rotation between a stat() and the open() cannot swap the file.
    """
    raw = open(path, "rb", buffering=0)
    if expect is not None:
        st = os.fstat(raw.fileno())
        if (st.st_dev, st.st_ino) != expect:
            raw.close()
            raise IdentityChanged(path)
    if compression is None:
        return raw
    import importlib

    module = importlib.import_module(_DECOMPRESSORS[compression])
    opener = {"gzip": "GzipFile", "bz2": "BZ2File", "lzma": "LZMAFile"}[module.__name__]
    try:
        if module.__name__ == "gzip":
            return module.GzipFile(fileobj=raw, mode="rb")  # type: ignore[no-any-return]
        return getattr(module, opener)(raw, "rb")  # type: ignore[no-any-return]
    except BaseException:
        raw.close()
        raise


class Fingerprint(namedtuple("Fingerprint", "length digest")):
    """SHA-256 of the first `length` bytes of a file's (decompressed) content.

    (A named tuple, not a dataclass: importing dataclasses costs `tail` start-up time.)
    """

    __slots__ = ()
    length: int
    digest: str

    @classmethod
    def of(cls, head: bytes) -> Fingerprint:
        head = head[:FINGERPRINT_BYTES]
        return cls(len(head), hashlib.sha256(head).hexdigest())

    def matches(self, head: bytes) -> bool:
        """True when `head` (at least `length` bytes of a file) starts like this fingerprint."""
        if self.length == 0 or len(head) < self.length:
            return False
        return hashlib.sha256(head[: self.length]).hexdigest() == self.digest

    def to_json(self) -> dict[str, object]:
        return {"length": self.length, "sha256": self.digest}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Fingerprint:
        length, digest = data["length"], data["sha256"]
        if not isinstance(length, int) or not isinstance(digest, str):
            raise ValueError("fingerprint must have an integer length and a sha256 string")
        return cls(length, digest)


def read_head(
    path: str, compression: Optional[str] = None, expect: Optional[tuple[int, int]] = None
) -> bytes:
    """The first FINGERPRINT_BYTES of a file, decompressed when it is compressed.

    A truncated or corrupt compressed file yields what could be decompressed: a generation that
    logrotate is still writing must not stop the reader.
    """
    fh = open_log(path, compression, expect)
    if compression is None:
        with fh:
            return os.pread(fh.fileno(), FINGERPRINT_BYTES, 0)
    out = b""
    try:
        with fh:
            while len(out) < FINGERPRINT_BYTES:
                piece = fh.read(FINGERPRINT_BYTES - len(out))
                if not piece:
                    break
                out += piece
    except Exception:  # OSError, EOFError, zlib.error, lzma.LZMAError: all "corrupt"
        pass
    return out
