"""The ledger: which log content the state directory says is imported, by whom.

One ledger covers live logs and history, so they never overlap. A live log's state file
lists the generations it read (its position) and those its first run left unread
(UNREAD_HISTORY); `import-files` keeps one state file per imported file, named by the file's
content identity (`history-<head digest>-<length>.state.json`). `live_claim` tells
`import-files` which files a live log reads itself; `imported_head` tells a live log with
start_at = "oldest" which generations `import-files` imported already.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional, Protocol

from matomo_rt.config import Config, LogConfig
from matomo_rt.store import StateError, load_state
from matomo_rt.tail.position import stored_position

#: State key: fingerprints of generations a log's first run (or a seek) left unread.
UNREAD_HISTORY = "unread_history"
HISTORY_PREFIX = "history-"
_DIGEST_CHARS = 16


class Content(Protocol):
    """A closed file as the ledger knows it."""

    path: Path
    dev: int
    ino: int
    head: bytes
    length: int


def history_key(head: bytes, length: int) -> str:
    """A file's identity: its decompressed head's digest and its decompressed length."""
    return f"{hashlib.sha256(head).hexdigest()[:_DIGEST_CHARS]}-{length}"


def state_name(head: bytes, length: int) -> str:
    return HISTORY_PREFIX + history_key(head, length)


def imported_head(state_dir: Path) -> Callable[[bytes], bool]:
    """Whether a file with this head was (or is being) imported by `import-files`."""
    try:
        names = os.listdir(state_dir)
    except OSError:
        names = []
    digests = {
        n[len(HISTORY_PREFIX) :].split("-", 1)[0]
        for n in names
        if n.startswith(HISTORY_PREFIX) and n.endswith(".state.json")
    }

    def check(head: bytes) -> bool:
        return hashlib.sha256(head).hexdigest()[:_DIGEST_CHARS] in digests

    return check


def live_claim(config: Config, f: Content) -> Optional[str]:
    """Why a configured log reads (or has read) `f` itself, or None when history may import it.

    A file `import-files` has started is history's: live logs leave it alone from then on.
    """
    if (config.state.dir / f"{state_name(f.head, f.length)}.state.json").exists():
        return None
    for log_config in config.logs:
        reason = _claim_of(config, log_config, f)
        if reason:
            return reason
    return None


def _claim_of(config: Config, log_config: LogConfig, f: Content) -> Optional[str]:
    from matomo_rt.logstate import state_paths  # the log state itself uses this module

    name = log_config.name
    live = log_config.path
    try:
        st = os.stat(live)
        if (st.st_dev, st.st_ino) == (f.dev, f.ino):
            return f"it is the live file of log {name}, which imports it itself"
    except OSError:
        pass
    sibling = f.path.parent.resolve() == live.parent.resolve() and f.path.name.startswith(live.name)
    try:
        document = load_state(state_paths(config, log_config)[0])
    except StateError:
        document = None
    if document is None:
        if sibling and config.start_at(log_config) == "oldest":
            return f"log {name} imports it on its first run (start_at = oldest)"
        return None
    try:
        position = stored_position(document, "")
    except StateError:
        return f"log {name}'s state is damaged: cannot tell whether it read this file"
    current = position.current
    if current is not None and current.fp.length and current.fp.matches(f.head):
        return f"log {name} is reading it"
    skipped = document.get(UNREAD_HISTORY)
    for gen in position.finished:
        if not (gen.fp.length and gen.fp.matches(f.head)):
            continue
        if isinstance(skipped, list) and gen.fp.to_json() in skipped:
            return None  # left unread by the log's first run: history's to import
        if gen.offset is not None and gen.offset < f.length:
            # Read in part (a batch boundary, lines written after the rename): the log reads
            # the rest at its next pass.
            read = f"{gen.offset:,} of its {f.length:,} bytes"
            return f"log {name} is reading it (it has read {read})"
        if skipped is None:
            return (
                f"log {name} has passed it and its state (from before import-files) does not"
                " say whether it imported it"
            )
        return f"log {name} imported it already"
    if sibling:
        return f"log {name} reads it as one of its rotated generations"
    return None
