"""What this process knows of one log's health, on top of its durable record.

A health verdict needs facts the commit protocol does not: the recent window of batches, the
file's problem, the backoff, the authentication pause. WatchedLog keeps them in memory, where
the service's log lines and metrics read them, and records them with every commit
(stats.health) for `status`, a separate process. The record itself, and what a commit makes
durable, is matomo_rt.logstate's; facts -> verdict is matomo_rt.health's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, TypeVar

from matomo_rt import detect, health
from matomo_rt.config import Config, LogConfig
from matomo_rt.logstate import LogState
from matomo_rt.store import StateError
from matomo_rt.tail.position import Position, lag_bytes

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 900.0

_Self = TypeVar("_Self", bound="WatchedLog")


def auth_key(url: Optional[str], token: Optional[str]) -> str:
    """Changes when the URL or token changes: a new token lifts the authentication pause."""
    return hashlib.sha256(f"{url}\0{token}".encode()).hexdigest()[:16]


def format_name(log_config: LogConfig) -> str:
    """The log's format as the health verdict names it."""
    return "a custom format_regex" if log_config.format_regex else log_config.format


class WatchedLog(LogState):
    """A LogState with its health: the verdict's facts, the backoff, the authentication pause.

    Every commit feeds its counts into the facts and records them; a changed fact with no
    commit (a file problem, a backoff) is recorded on its own (_save_health).
    """

    def __init__(
        self,
        config: Config,
        log_config: LogConfig,
        token: Optional[str] = None,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, log_config, dry_run, clock)
        self.token = token
        self.health = health.LogHealth()
        self._pass_imported = 0  # requests imported by the running pass, for the health facts
        self.consecutive_failures = 0
        self.retry_at = 0.0

    def open(self: _Self) -> _Self:
        super().open()
        self.health = health.LogHealth.from_json(self.stats.get("health"))
        return self

    def _commit(
        self,
        position: Position,
        document: Optional[dict[str, Any]] = None,
        quarantine: Sequence[tuple[str, bytes]] = (),
        **updates: Any,
    ) -> None:
        """LogState._commit, with the health facts noted and recorded in the statistics
        (`unmatched_hosts`, the batch's host names, feeds the facts only)."""
        hosts = tuple(updates.pop("unmatched_hosts", ()))
        noted = self._note_commit(updates, hosts)
        super()._commit(position, document, quarantine, health=noted, **updates)

    def _note_commit(self, updates: Mapping[str, Any], hosts: tuple[str, ...]) -> dict[str, Any]:
        """Feed a commit's counts into the health facts; their record for the statistics."""
        imported = int(updates.get("add_imported", 0))
        self.health.note_batch(
            self.clock(),
            int(updates.get("add_lines_read", 0)),
            # Lines the importer could not parse in the log's format count as held back too.
            int(updates.get("add_quarantined", 0)) + int(updates.get("add_invalid", 0)),
            imported,
            int(updates.get("add_unmatched", 0)),
            hosts,
            pass_imported=self._pass_imported > 0,
        )
        self._pass_imported += imported
        self._note_detection()
        return self.health.to_json()

    def auth_pause(self) -> dict[str, Any]:
        """The statistics' record of a pause after Matomo refused the token: until when, and
        for which URL and token (a new token lifts it)."""
        return {
            "until": self.clock() + health.AUTH_PAUSE_SECONDS,
            "key": auth_key(self.config.matomo.url, self.token),
        }

    def auth_paused(self) -> Optional[str]:
        """Why imports are paused after Matomo refused the token, or None."""
        until = health.pause_until(
            self.stats, auth_key(self.config.matomo.url, self.token), self.clock()
        )
        if until is None:
            return None
        return (
            f"Matomo refused the token; paused until "
            f"{time.strftime('%H:%M:%S', time.localtime(until))} to avoid Matomo blocking this"
            " host after repeated failed logins. Fix matomo.token_auth_file (the pause lifts"
            " when the token changes)"
        )

    def back_off(self) -> None:
        """Wait longer after each failure in a row (the service's ticks honour retry_at)."""
        self.consecutive_failures += 1
        delay = min(
            self.config.import_.interval * 2 ** (self.consecutive_failures - 1),
            MAX_BACKOFF_SECONDS,
        )
        self.retry_at = self.clock() + delay
        self.health.failures, self.health.retry_at = self.consecutive_failures, self.retry_at
        self._save_health()

    def _note_detection(self) -> None:
        """Once the window says wrong format: look at the log's recent lines (matomo_rt.detect)
        to name what they are and the fix; forgotten when the window is fine again."""
        h = self.health
        if not health.wrong_format(h, self.config.health):
            h.detected = None
            return
        if h.detected is not None or self.log_config.format_regex:
            return
        try:
            detection = detect.detect_file(self.log_config.path)
        except OSError:
            return  # the file problem is its own verdict
        h.detected = detect.mismatch(self.log_config.format, detection) or ""

    def _save_health(self) -> None:
        """Persist a changed health fact (file problem, backoff) for `status` to see."""
        if self.dry_run or self.reader is None or self.unsaved:
            return
        try:
            self._commit(self.position)
        except StateError as exc:
            log.debug("%s: cannot record health facts: %s", self.name, exc)

    def verdict(self) -> health.Verdict:
        """This log's health from what this process knows (its memory, not the state file)."""
        file = self.health.file
        return health.judge_log(
            health.log_facts(
                self.name,
                str(self.log_config.path),
                self.document,
                file_now=(file["kind"], str(file.get("reason", ""))) if file else None,
                lag_bytes=self.lag_bytes(),
                token_key=auth_key(self.config.matomo.url, self.token),
                recorded=self.health,
                log_format=format_name(self.log_config),
                unwritable=self.write_failure[1] if self.write_failure else None,
                unwritable_since=self.write_failure[0] if self.write_failure else None,
                now=self.clock(),
            ),
            self.clock(),
            self.config.health,
        )

    def lag_bytes(self) -> Optional[int]:
        """Bytes of the live file not yet committed (rotated leftovers not counted)."""
        try:
            st = os.stat(self.log_config.path)
        except OSError:
            return None
        current = self.position.current
        if current is None:
            return st.st_size
        return lag_bytes(
            current.dev, current.ino, current.offset or 0, st.st_size, st.st_dev, st.st_ino
        )
