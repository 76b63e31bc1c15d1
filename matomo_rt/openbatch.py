"""The open batch: a partitioned batch's durable record until every partition is in Matomo.

With `import.workers` > 1 a batch is imported in K partitions (matomo_rt.workers), each one's
outcome exact. Until all of them are done the log's state document holds the batch, under
"open_batch": its length, a digest of its bytes, where it ends, K, and how many lines of each
partition Matomo holds. A retry reads the same lines again and sends each partition only what it
lacks; `status`, the metrics and the pass all read this record, and none of them needs the
machinery that runs the importers. The document around it is matomo_rt.logstate's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

from matomo_rt.logstate import LogState
from matomo_rt.store import StateError
from matomo_rt.tail import Batch, Position

OPEN_BATCH_VERSION = 1


@dataclass
class OpenBatch:
    """A partitioned batch not yet wholly in Matomo; stored in the state as "open_batch"."""

    workers: int
    lines: int  # lines of the log the batch spans (what a retry reads again)
    digest: str  # sha256 of those bytes (see digest()): the retry's lines must be the same
    end: Position  # where the log's position goes once every partition is done
    sizes: list[int]  # lines handed to each partition's importer (after the Guard)
    done: list[int] = field(default_factory=list)  # of those, lines Matomo holds (or skipped)

    @property
    def complete(self) -> bool:
        return all(d >= s for d, s in zip(self.done, self.sizes))

    @property
    def pending(self) -> int:
        """Requests handed to the partitions' importers that Matomo does not hold yet."""
        return sum(self.sizes) - sum(self.done)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": OPEN_BATCH_VERSION,
            "workers": self.workers,
            "lines": self.lines,
            "digest": self.digest,
            "end": self.end.to_json(),
            "sizes": list(self.sizes),
            "done": list(self.done),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> OpenBatch:
        """The stored batch; a damaged one is a StateError (never a silent restart)."""
        try:
            if data.get("version") != OPEN_BATCH_VERSION:
                raise ValueError(f"version {data.get('version')!r} is not {OPEN_BATCH_VERSION}")
            batch = cls(
                workers=data["workers"],
                lines=data["lines"],
                digest=data["digest"],
                end=Position.from_json(data["end"]),
                sizes=list(data["sizes"]),
                done=list(data["done"]),
            )
            counts = [batch.workers, batch.lines, *batch.sizes, *batch.done]
            if not all(type(n) is int and n >= 0 for n in counts) or batch.workers < 1:
                raise ValueError("counts must be whole numbers")
            if len(batch.sizes) != batch.workers or len(batch.done) != batch.workers:
                raise ValueError("one size and one count per worker")
            if not isinstance(batch.digest, str):
                raise ValueError("digest must be a string")
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(
                f"{where}: the open batch in the state file is damaged ({exc}); move the file"
                " aside and set the position with `matomo-rt seek`"
            ) from None
        return batch


def load_open(source: LogState) -> Optional[OpenBatch]:
    """The batch a previous pass left open, if any."""
    assert source.reader is not None
    data = source.document.get("open_batch")
    if not data:
        return None
    return OpenBatch.from_json(data, str(source.state_path))


def pending_requests(source: LogState) -> int:
    """Requests of the open batch not yet in Matomo (0 when none is open or it is damaged)."""
    try:
        opened = load_open(source)
    except StateError:
        return 0
    return 0 if opened is None else opened.pending


def digest(batch: Batch) -> str:
    """The sha256 of a batch's bytes, as the record keeps it: another hash needs another
    OPEN_BATCH_VERSION, or every stored open batch would look changed."""
    h = hashlib.sha256()
    for data in batch.chunks():
        h.update(data)
    return h.hexdigest()
