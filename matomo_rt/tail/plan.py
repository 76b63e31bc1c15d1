"""Planning a pass: which files beside a log still hold unread lines, in the order to read them.

A plan is built in steps, one function each, over one `_Plan`: the finished generations (late
lines written after their rename), the generation the position is in (resumed, or finished
under its new name or as the copy a copytruncate left), generations rotated since, then the
live file from its start. Every file a step accounts for adds its fingerprint to ONE set of
known fingerprints before the next step looks, so no content is planned twice: a file whose
head is known is the same lines under another name (a copy, a compressed twin).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections import namedtuple

from matomo_rt.tail.identity import (
    FINGERPRINT_BYTES,
    Fingerprint,
    IdentityChanged,
    compression_of,
    read_head,
)
from matomo_rt.tail.position import Generation, Position

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Callable, Optional

    Warn = Callable[[str, str], None]

log = logging.getLogger(__name__)

#: Names beside a log that are ours or an editor's, never a rotated generation of it.
_NOT_GENERATIONS = (".offset", ".lock", ".tmp", ".state", ".swp", "~")
#: How often a pass re-plans when files move under it before leaving it to the next pass.
PLAN_ATTEMPTS = 5
_GENERATION_NUMBER = re.compile(r"\.(\d+)(?:\.(?:gz|bz2|xz))?$")


class ReaderError(Exception):
    """The log cannot be read at all (permission, not a file); the message names it."""


class Replan(Exception):
    """A file changed identity while planning; plan again."""


class Candidate:
    """A file beside the log that may be one of its generations."""

    __slots__ = ("_head", "compression", "dev", "ino", "mtime_ns", "name", "path", "size")

    def __init__(
        self,
        path: str,
        name: str,
        dev: int,
        ino: int,
        size: int,
        mtime_ns: int,
        compression: Optional[str],
    ) -> None:
        self.path, self.name, self.dev, self.ino = path, name, dev, ino
        self.size, self.mtime_ns, self.compression = size, mtime_ns, compression
        self._head: Optional[bytes] = None

    def head(self) -> bytes:
        """The file's first bytes, read from the very file that was stat()ed."""
        if self._head is None:
            try:
                self._head = read_head(self.path, self.compression, (self.dev, self.ino))
            except (IdentityChanged, FileNotFoundError):
                raise Replan from None  # renamed since the directory was listed
            except OSError:
                self._head = b""
        return self._head


class Step(namedtuple("Step", "role gen path limit copy", defaults=(None, False))):
    """One file to read in this pass: `role` says how reading it moves the position.

    role: "finished" (late lines of a finished generation), "rotated" or "live"; gen.offset is
    where reading starts; limit: read no further (the live file's size when planned); copy:
    copytruncate's copy of content read from the live file, which may end before gen.offset
    (the reader read past the copy before the truncate): no loss, nothing to warn of.
    """

    __slots__ = ()


# -- what is on disk ---------------------------------------------------------------------------


def stat_live(log_path: Path) -> Optional[Candidate]:
    """The live file, None when it does not exist; ReaderError when it cannot be read."""
    path = str(log_path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ReaderError(f"{path}: permission denied (add the user to the log's group)") from None
    except NotADirectoryError:
        raise ReaderError(f"{path}: a parent of the log path is not a directory") from None
    if not stat.S_ISREG(st.st_mode):
        raise ReaderError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ReaderError(f"{path}: permission denied (add the user to the log's group)")
    return Candidate(path, log_path.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, None)


def siblings(log_path: Path, exclude: tuple[str, ...]) -> list[Candidate]:
    """Readable regular files beside the log whose names start with its name, but those
    starting with a name in `exclude` (other logs, our own state files)."""
    directory = log_path.parent
    base = log_path.name
    found: list[Candidate] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    except PermissionError:
        raise ReaderError(f"{directory}: permission denied listing the log's directory") from None
    for name in names:
        if name == base or not name.startswith(base) or name.startswith(exclude):
            continue
        if name.endswith(_NOT_GENERATIONS) or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
            continue
        found.append(
            Candidate(
                path, name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, compression_of(name)
            )
        )
    return found


# -- the plan ----------------------------------------------------------------------------------


def plan(
    log_path: Path,
    pos: Position,
    start_at: str,
    exclude: tuple[str, ...],
    warn: Warn,
    imported: Optional[Callable[[bytes], bool]] = None,
) -> tuple[list[Step], Position]:
    """The files to read, oldest first, and the position once planning is recorded.

    A rotation while planning (a name that now points at another file) starts the plan again;
    if files keep moving, this pass reads nothing and the next one tries again.
    """
    for _ in range(PLAN_ATTEMPTS):
        try:
            live = stat_live(log_path)
            cands = siblings(log_path, exclude)
            if not pos.initialized and start_at == "oldest":
                return _Plan(live, cands, warn).build(oldest(cands, imported))
            if not pos.initialized:
                return first_run(live, cands, 0 if start_at == "beginning" else None)
            return _Plan(live, cands, warn).build(pos)
        except Replan:
            continue
    log.debug("%s: files kept moving while planning; next pass", log_path)
    return [], pos


def _read_whole(c: Candidate) -> Generation:
    """`c` as a generation read to its end (a compressed one's length is not known)."""
    return Generation(
        c.dev,
        c.ino,
        Fingerprint.of(c.head()),
        c.size if c.compression is None else None,
        c.name,
        c.compression,
        complete=True,
    )


def oldest(cands: list[Candidate], imported: Optional[Callable[[bytes], bool]] = None) -> Position:
    """Before the oldest generation: every file beside the log is read, oldest first, then the
    live file, as generations rotated since a pass are; except files `import-files` imported
    (`imported` is true for their head), which count as read."""
    done = tuple(
        _read_whole(c) for c in cands if c.head() and imported is not None and imported(c.head())
    )
    return Position(True, None, done)


def first_run(
    live: Optional[Candidate], cands: list[Candidate], start: Optional[int]
) -> tuple[list[Step], Position]:
    """What exists now is history: remember it, and start the live file at byte `start`
    (None: after its last complete line)."""
    history = tuple(_read_whole(c) for c in cands if c.head())
    pos = Position(True, None, history)
    if live is None:
        return [], pos
    begin = _last_line_end(live) if start is None else start
    gen = Generation(live.dev, live.ino, Fingerprint.of(live.head()), begin, live.name)
    return [Step("live", gen, live.path, limit=live.size)], pos.with_current(gen)


class _Plan:
    """One attempt at planning a pass: the files found, those accounted for, what to read."""

    def __init__(self, live: Optional[Candidate], cands: list[Candidate], warn: Warn) -> None:
        self.live = live
        self.cands = cands
        self.warn = warn
        self.claimed: set[tuple[int, int]] = set()
        #: Heads of every file this plan accounts for: a file starting like one is no news.
        self.known: set[Fingerprint] = set()
        self.steps: list[Step] = []
        self.live_step: Optional[Step] = None

    def build(self, pos: Position) -> tuple[list[Step], Position]:
        pos = self.finished_generations(pos)
        pos = self.current_generation(pos)
        self.rotated_since()
        self.live_from_start()
        # The live file is always last: every older generation is finished before it.
        steps = self.steps if self.live_step is None else [*self.steps, self.live_step]
        return steps, pos

    # -- bookkeeping

    def unclaimed(self) -> Iterator[Candidate]:
        return (c for c in self.cands if (c.dev, c.ino) not in self.claimed)

    def account(self, cand: Candidate, fp: Fingerprint) -> None:
        """`cand` is planned (or known read) as the content starting like `fp`; a file that
        starts as it does now (a copy of it) is no news either."""
        self.claimed.add((cand.dev, cand.ino))
        self.known.add(fp)
        if cand.head():
            self.known.add(Fingerprint.of(cand.head()))

    def knows(self, head: bytes) -> bool:
        return any(fp.matches(head) for fp in self.known)

    def find(self, gen: Generation) -> Optional[Candidate]:
        """The generation's file: by inode if it still starts as it did, else by its head
        under a new name or compressed (`compress` frees the inode of the file it compressed,
        and a later .gz or live file may get it).

        A generation that was empty when last seen has no head to check, only an inode that
        may have been freed and reused since (by a copy of the live file, say): it is never
        found. Whatever its file holds now is no news to it: lines written there after the
        rename are content of unknown head, which `rotated_since` reads once like any other.
        """
        if gen.fp.length == 0:
            return None
        c = next((c for c in self.cands if gen.same_file(c.dev, c.ino)), None)
        if c is not None and _head_ok(gen, c):
            return c
        return self.relocate(gen)

    def relocate(self, gen: Generation) -> Optional[Candidate]:
        """The generation's file under a new name or compressed form, by fingerprint."""
        if gen.fp.length == 0:
            return None
        return next((c for c in self.unclaimed() if gen.fp.matches(c.head())), None)

    # -- the steps, in order

    def finished_generations(self, pos: Position) -> Position:
        """Recognise finished generations; pick up lines written after their rename, and the
        rest of one read in part (a compressed file does not grow: once read to its end, it
        is never opened again)."""
        finished: list[Generation] = []
        for gen in pos.finished:
            c = self.find(gen)
            if c is None:
                continue  # gone everywhere: forget it
            if not gen.same_file(c.dev, c.ino):  # compressed (or copied): look at it again
                gen = gen._replace(complete=False)
            self.account(c, gen.fp)
            gen = _extend(_moved(gen, c), c.head())
            if gen.offset is not None and c.compression is None and c.size > gen.offset:
                gen = gen._replace(complete=False)  # late lines
            finished.append(gen)
            # (offset None: history from before the first run, counted as read)
            if gen.offset is not None and not gen.complete:
                self.steps.append(Step("finished", gen, c.path))
        return Position(True, pos.current, tuple(finished))

    def current_generation(self, pos: Position) -> Position:
        """The generation the position is in: resumed in the live file, or finished elsewhere."""
        current = pos.current
        if current is None:
            return pos
        live = self.live
        if live is not None and current.same_file(live.dev, live.ino):
            return self._current_is_live(pos, current, live)
        return self._current_moved(pos, current)

    def _current_is_live(self, pos: Position, current: Generation, live: Candidate) -> Position:
        offset = current.offset or 0
        if _head_ok(current, live) and resume_ok(live, offset):
            return self._resume_live(pos, current, live)
        copy = self.relocate(current)
        if copy is not None:
            self.account(copy, current.fp)
            # What the reader knows: the old content up to `offset` was read, the copy holds
            # it from its start, and its rest is read now. Whether anything was written after
            # the copy and not read before the truncate, it cannot know (nor, with a
            # renamed-and-compressed generation whose freed inode the next `create` reused,
            # whether this was a copytruncate at all): it says so, and claims no loss.
            self.warn(
                "copytruncate",
                "truncated in place (copytruncate), or replaced by a new file on the same inode;"
                f" read up to byte {offset}, the old content goes on in {copy.name}, then this"
                " file is read from its start. Lines written after a copy and not read before"
                " its truncation would be in neither file; matomo-rt cannot tell whether there"
                " were any: prefer rename + reopen in logrotate",
            )
            gen = _extend(_moved(current, copy), copy.head())
            self.steps.append(Step("rotated", gen, copy.path, copy=True))
        elif live.size < offset:
            self.warn(
                "truncated",
                f"truncated from {offset} to {live.size} bytes and no copy was found; lines"
                f" written after byte {offset} before the truncation, if any, were not read",
            )
        else:
            self.warn(
                "replaced",
                "replaced by a new file with the same inode; reading it from the start. Unread"
                " lines of the old file, if any, are lost",
            )
        return pos

    def _current_moved(self, pos: Position, current: Generation) -> Position:
        offset = current.offset or 0
        if (
            current.fp.length == 0
            and offset == 0
            and any(current.same_file(c.dev, c.ino) for c in self.cands)
        ):
            # Nothing was read from it, and whatever its inode holds now (late lines, or
            # another file on the reused inode) is read by its content (rotated_since).
            return pos.with_current(None)
        c = self.find(current)
        live = self.live
        if c is not None:
            self.account(c, current.fp)
            if c.compression is None and not resume_ok(c, offset):
                self.warn(
                    "truncated",
                    f"rotated generation {c.name} is shorter than the stored offset {offset};"
                    " reading on from its end",
                )
                offset = c.size
            gen = _extend(_moved(current, c), c.head())._replace(offset=offset)
            self.steps.append(Step("rotated", gen, c.path))
            return pos
        if (
            live is not None
            and current.fp.length >= min(FINGERPRINT_BYTES, offset, live.size)
            and current.fp.length
            and current.fp.matches(live.head())
            and resume_ok(live, offset)
        ):
            # Same content under a new identity: a remount (st_dev), a restore, an edit that
            # rewrote the file. Resuming is right; re-reading would duplicate.
            self.warn(
                "identity",
                f"file identity changed but its content matches; resuming at byte {offset}",
            )
            return self._resume_live(pos, _moved(current, live), live)
        self.warn(
            "lost",
            f"the generation read up to byte {offset} (last seen as {current.name}) is gone;"
            " lines written after that byte, if any, were not read",
        )
        return pos.with_current(None)

    def _resume_live(self, pos: Position, current: Generation, live: Candidate) -> Position:
        head = live.head()
        # A copy of the live file (copytruncate's, made before its truncate) holds a prefix of
        # it: the fingerprint grows no longer than that copy, so after the truncate the copy
        # is found as the rest of this generation, and meanwhile it is no news.
        copies = [len(c.head()) for c in self.unclaimed() if c.head() and head.startswith(c.head())]
        if copies:
            head = head[: max(min(copies), current.fp.length)]
        gen = _extend(current._replace(name=live.name), head)
        self.known.add(gen.fp)
        self.live_step = Step("live", gen, live.path, limit=live.size)
        return pos.with_current(gen)

    def rotated_since(self) -> None:
        """Everything else beside the log with unknown content, oldest first: generations
        rotated since. Each one's head becomes known before the next file and the live file
        are looked at: a copy (copytruncate's, before its truncate) or a compressed twin
        being written beside its source holds the same lines and must not be read twice.

        When the position is already in the live file, such a file is older than it (renamed
        while still empty, written to before nginx reopened, maybe compressed since): its lines
        are late lines of a finished generation, and reading them must not move the position
        out of the live file (a restart mid-way would then not know the live file's lines).
        """
        for c in sorted(self.unclaimed(), key=_age_key):
            head = c.head()
            if not head or self.knows(head):
                continue
            gen = Generation(c.dev, c.ino, Fingerprint.of(head), 0, c.name, c.compression)
            self.account(c, gen.fp)
            late = self.live_step is not None
            self.steps.append(Step("finished" if late else "rotated", gen, c.path))

    def live_from_start(self) -> None:
        """A live file we are not in yet, unless its content is already accounted for."""
        live = self.live
        if live is None or self.live_step is not None:
            return
        head = live.head()
        if not self.knows(head):
            gen = Generation(live.dev, live.ino, Fingerprint.of(head), 0, live.name)
            self.live_step = Step("live", gen, live.path, limit=live.size)


# -- helpers -----------------------------------------------------------------------------------


def _age_key(cand: Candidate) -> tuple[int, int, str]:
    """Oldest first: by last write (logrotate keeps it when compressing), then by name.

    Names break ties between files written within one clock tick: `.2` is older than `.1`,
    and dated names sort by their date; `x.2` comes before its compressed twin `x.2.gz`.
    """
    m = _GENERATION_NUMBER.search(cand.name)
    return (cand.mtime_ns, -int(m.group(1)) if m else 0, cand.name)


def _head_ok(gen: Generation, cand: Candidate) -> bool:
    """Does the file still start as the generation did? (Empty at the time: nothing to check.)"""
    return gen.fp.length == 0 or gen.fp.matches(cand.head())


def resume_ok(cand: Candidate, offset: int) -> bool:
    """The resume point is inside the file and right after a line end."""
    if offset == 0:
        return True
    if cand.size < offset:
        return False
    try:
        fd = _open_same(cand)
    except FileNotFoundError:
        raise Replan from None
    except OSError:
        return False
    try:
        return os.pread(fd, 1, offset - 1) == b"\n"
    finally:
        os.close(fd)


def _open_same(cand: Candidate) -> int:
    """A descriptor of the very file `cand` describes; Replan if its name moved on."""
    fd = os.open(cand.path, os.O_RDONLY)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (cand.dev, cand.ino):
        os.close(fd)
        raise Replan
    return fd


def _extend(gen: Generation, head: bytes) -> Generation:
    """A longer fingerprint once the file has more head bytes (same prefix, verified)."""
    if len(head) > gen.fp.length and (gen.fp.length == 0 or gen.fp.matches(head)):
        return gen._replace(fp=Fingerprint.of(head))
    return gen


def _moved(gen: Generation, cand: Candidate) -> Generation:
    return gen._replace(dev=cand.dev, ino=cand.ino, name=cand.name, compression=cand.compression)


def _last_line_end(cand: Candidate) -> int:
    """Offset just after the last newline in the file (0 if none): where "end" starts."""
    size = cand.size
    try:
        fd = _open_same(cand)
    except FileNotFoundError:
        raise Replan from None
    try:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            block = os.pread(fd, pos - start, start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
        return 0
    finally:
        os.close(fd)
