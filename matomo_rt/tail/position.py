"""The reader's position: which generation of the log it is in, how far, and what it finished.

It is a value (frozen, JSON round-trip) so a batch can carry "the position after line N" without
touching the disk; only the caller's commit makes it durable.
"""

from __future__ import annotations

from collections import namedtuple

from matomo_rt.store import StateError
from matomo_rt.tail.identity import Fingerprint

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any, Optional


class Generation(
    namedtuple("Generation", "dev ino fp offset name compression complete", defaults=(None, False))
):
    """One file of a log's rotation history, known by inode and head fingerprint.

    `offset` counts decompressed bytes already handed on. It is None for a compressed file
    that existed before the first run and was never read (its length was never needed).
    `complete`: a finished generation was read to its end, not only up to `offset`. A
    compressed file's size says nothing about its decompressed length, so without it a
    compressed generation read in part (a batch boundary, a restart) could not be told from
    one read whole, and its rest would be lost.
    Named tuples, not dataclasses, to keep `matomo-rt tail` start-up fast.
    """

    __slots__ = ()
    dev: int
    ino: int
    fp: Fingerprint
    offset: Optional[int]
    name: str
    compression: Optional[str]
    complete: bool

    def same_file(self, dev: int, ino: int) -> bool:
        return self.dev == dev and self.ino == ino

    def to_json(self) -> dict[str, Any]:
        return {
            "dev": self.dev,
            "ino": self.ino,
            "fingerprint": self.fp.to_json(),
            "offset": self.offset,
            "name": self.name,
            "compression": self.compression,
            "complete": self.complete,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Generation:
        gen = cls(
            dev=data["dev"],
            ino=data["ino"],
            fp=Fingerprint.from_json(data["fingerprint"]),
            offset=data["offset"],
            name=data["name"],
            compression=data.get("compression"),
            # Older states do not say: a compressed generation is then read on from its
            # offset once (nothing twice), and recorded complete.
            complete=data.get("complete", False),
        )
        if not isinstance(gen.dev, int) or not isinstance(gen.ino, int):
            raise ValueError("dev and ino must be integers")
        if gen.offset is not None and (not isinstance(gen.offset, int) or gen.offset < 0):
            raise ValueError("offset must be a non-negative integer or null")
        if not isinstance(gen.complete, bool):
            raise ValueError("complete must be true or false")
        return gen


class Position(namedtuple("Position", "initialized current finished", defaults=(False, None, ()))):
    """Where reading resumes.

    `current` is the generation being read (normally the live file); None after a rotated
    generation was finished and before the next one was started, or before a first run.
    `finished` are rotated generations the reader moved past, kept to recognise them under new
    names and to pick up lines written to them after the rename (their `complete` says whether
    they were read to their end since). `initialized` separates "first run"
    (what exists is history) from "between generations" (what appears is new).
    """

    __slots__ = ()
    initialized: bool
    current: Optional[Generation]
    finished: tuple[Generation, ...]

    def with_current(self, gen: Optional[Generation]) -> Position:
        return self._replace(initialized=True, current=gen)

    def with_finished(self, gen: Generation) -> Position:
        """Record `gen` (replacing any older record of the same file) as finished."""
        rest = tuple(f for f in self.finished if f.fp != gen.fp)
        return self._replace(initialized=True, finished=(*rest, gen))

    def to_json(self) -> dict[str, Any]:
        return {
            "initialized": self.initialized,
            "current": None if self.current is None else self.current.to_json(),
            "finished": [g.to_json() for g in self.finished],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Position:
        current = data.get("current")
        return cls(
            initialized=bool(data.get("initialized", True)),
            current=None if current is None else Generation.from_json(current),
            finished=tuple(Generation.from_json(g) for g in data.get("finished", [])),
        )


def stored_position(document: Optional[dict[str, Any]], path: object) -> Position:
    """The position in a state document read from `path`; a fresh one when there is none yet.

    A damaged one is a loud error naming the way out, never a silent restart from zero.
    """
    if document is None:
        return Position()
    try:
        return Position.from_json(document["position"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(
            f"{path}: state file is damaged ({exc}); move it aside and set the position with"
            " `matomo-rt seek`"
        ) from None


def lag_bytes(
    dev: object, ino: object, offset: object, size: int, live_dev: int, live_ino: int
) -> int:
    """Bytes of the live file not yet committed. When the position is in another file (between
    generations, or rotated since), the whole live file is ahead; rotated leftovers are not
    counted. Takes raw values so `status` can use it on a state file it only half trusts."""
    if dev == live_dev and ino == live_ino and isinstance(offset, int):
        return max(size - offset, 0)
    return size
