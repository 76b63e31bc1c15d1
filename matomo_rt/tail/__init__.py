"""The offset reader: a logtail that follows every kind of rotation without losing a line."""

from matomo_rt.store import LockedError, SourceLock, StateError
from matomo_rt.tail.position import Generation, Position
from matomo_rt.tail.reader import Batch, LogReader, ReaderError, Reading

__all__ = [
    "Batch",
    "Generation",
    "LockedError",
    "LogReader",
    "Position",
    "ReaderError",
    "Reading",
    "SourceLock",
    "StateError",
]
