"""The token_auth for a long-running service: re-read when its file changes.

README says fixing the token file lifts the authentication pause; the service must then use
the new token at its next tick, as `status` (which reads the file each time) already assumes.
A stat per tick is the whole cost; the file is read again only when its identity, size or
modification time changed, and the token is taken only if the content did.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from matomo_rt.config import ConfigError, MatomoConfig, load_token

log = logging.getLogger(__name__)


class TokenFile:
    """Holds the token; `current()` re-reads matomo.token_auth_file when it changed."""

    def __init__(self, matomo: MatomoConfig, source: Optional[Path] = None) -> None:
        self.matomo = matomo
        self.source = source
        self._stamp = self._stat()
        self.token = load_token(matomo, source)
        self._broken: Optional[str] = None

    def _stat(self) -> Optional[tuple[int, int, int, int]]:
        path = self.matomo.token_auth_file
        if path is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> Optional[str]:
        """The token to use now. A file that became unreadable or empty keeps the last good
        token (said once): the importer then fails on its own if that one is bad."""
        if self.matomo.token_auth_file is None:
            return self.token
        stamp = self._stat()
        if stamp == self._stamp and self._broken is None:
            return self.token
        self._stamp = stamp
        try:
            token = load_token(self.matomo, self.source)
        except ConfigError as exc:
            problem = "; ".join(exc.problems)
            if problem != self._broken:
                log.error("%s; keeping the token read before", problem)
            self._broken = problem
            return self.token
        if self._broken is not None:
            log.info("the token file is readable again")
            self._broken = None
        if token != self.token:
            log.info("the token file changed: using the new token")
            self.token = token
        return self.token
