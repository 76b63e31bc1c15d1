"""The offset reader: a logtail that follows every kind of rotation without losing a line."""

from matomo_rt.tail.position import Generation, Position
from matomo_rt.tail.reader import Batch, LogReader, ReaderError
from matomo_rt.tail.store import LockedError, SourceLock, StateError

__all__ = [
    "Batch",
    "Generation",
    "LockedError",
    "LogReader",
    "Position",
    "ReaderError",
    "SourceLock",
    "StateError",
]
