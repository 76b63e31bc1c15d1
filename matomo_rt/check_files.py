"""`check`, the files: what the user running the check can reach and read or write.

Logs (there, readable, their directory listable, their lines in the configured format), the
state directory and state files, the token file, Matomo's tmp/ for core:archive. Each answer
holds for this user only, so each failure names who was checked and the file's owner and mode:
as root everything passes, and the service runs as another user (RUN_AS_SERVICE).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from matomo_rt import detect
from matomo_rt.config import TOKEN_ENV, Config, ConfigError, LogConfig, load_token
from matomo_rt.logstate import state_paths
from matomo_rt.store import StateError, load_state

if TYPE_CHECKING:
    from matomo_rt.check import Checklist

#: How to run `check` as the contrib systemd unit runs the service (User=www-data,
#: Group=www-data, SupplementaryGroups=adm); README's quick start gives the same command.
RUN_AS_SERVICE = "runuser -u www-data -g www-data -G adm -- matomo-rt check"
#: Where core:archive writes under Matomo's tmp/ (caches, compiled templates, its CliMulti
#: request files); each that exists must take a new file.
ARCHIVE_TMP_DIRS = ("", "cache", "climulti", "templates_c", "logs")


def who() -> str:
    """The user and groups this check runs as, the way `id` shows them."""
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    groups = []
    for gid in dict.fromkeys([os.getegid(), *os.getgroups()]):
        try:
            groups.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            groups.append(str(gid))
    return f"user {name} (uid {uid}, groups {','.join(groups)})"


def _owner(st: os.stat_result) -> str:
    """ "owner root:www-data, mode 0640" for a file's stat."""
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owner {user}:{group}, mode {stat.S_IMODE(st.st_mode):04o}"


def check_log(c: Checklist, log_config: LogConfig) -> bool:
    """Whether the log is there and readable (its format can be looked at)."""
    path = log_config.path
    name = log_config.name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        c.fail(
            f"log {name}: {path}: no such file",
            "fix logs.path, or start the web server so it creates the log",
        )
        return False
    except OSError as exc:
        c.fail(f"log {name}: {path}: {_reason(exc)}", f"let {who()} reach the log")
        return False
    if not stat.S_ISREG(st.st_mode):
        c.fail(f"log {name}: {path}: not a regular file", "point logs.path at the log file")
        return False
    if not os.access(path, os.R_OK):
        c.fail(
            f"log {name}: {path}: not readable by {who()} ({_owner(st)})",
            "add the service's user to the log's group (e.g. adm)",
        )
        return False
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        c.fail(f"log {name}: {path}: cannot read: {_reason(exc)}", "check its permissions")
        return False
    try:
        os.listdir(path.parent)
    except OSError as exc:
        c.fail(
            f"log {name}: {path.parent}: cannot list the directory ({_reason(exc)})",
            "rotated generations are found by listing it: give the service's user r-x on it",
        )
        return False
    c.ok(f"log {name}: {path} is readable ({st.st_size:,} bytes)")
    return True


def check_log_format(c: Checklist, log_config: LogConfig) -> None:
    name = log_config.name
    fmt = log_config.log_format.label
    try:
        found = detect.detect_file(log_config.path)
    except OSError as exc:
        c.fail(f"log {name}: {log_config.path}: cannot read: {_reason(exc)}")
        return
    if not found.lines:
        c.skip(f"log {name}: format: the log has no complete line yet")
        return
    problem = detect.mismatch(fmt, found)
    if problem is None:
        if found.share_of(fmt) is None:
            c.skip(f"log {name}: format {fmt} cannot be verified here ({found.summary()})")
        else:
            c.ok(f"log {name}: {found.summary()}")
        return
    text = f"log {name}: {log_config.path} {problem}"
    if found.share_of(fmt) is not None and found.share_of(fmt) >= detect.WRONG_BELOW:
        c.warn(text)
    else:
        head, _, way_out = text.partition(" — ")
        c.fail(head, way_out)


def check_state(c: Checklist, config: Config) -> None:
    directory = config.state.dir
    if not directory.exists():
        ancestor = directory.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
            c.warn(
                f"state directory {directory} does not exist yet: `matomo-rt run` creates it, "
                f"`matomo-rt import` needs it (create it: install -d -m 0750 {directory})"
            )
        else:
            c.fail(
                f"state directory {directory}: does not exist and cannot be created "
                f"({ancestor} is {'not a directory' if not ancestor.is_dir() else 'not writable'})",
                f"create it: install -d -m 0750 -o <service user> {directory}, or set state.dir",
            )
        return
    if not directory.is_dir():
        c.fail(f"state directory {directory}: not a directory", "set state.dir to a directory")
        return
    exc = _cannot_create_file(directory)
    if exc is not None:
        c.fail(
            f"state directory {directory}: cannot create a file ({_reason(exc)})",
            f"make it writable by the service's user: chown <user> {directory}",
        )
        return
    c.ok(f"state directory {directory} is writable")
    for log_config in config.logs:
        state_path = state_paths(config, log_config)[0]
        try:
            document = load_state(state_path)
        except StateError as exc:
            c.fail(f"log {log_config.name}: {exc}")
            continue
        if document is not None:
            c.ok(f"log {log_config.name}: state file {state_path} is readable")


def check_token(c: Checklist, config: Config) -> tuple[Optional[str], bool]:
    """(token, usable)."""
    path = config.matomo.token_auth_file
    st = None  # the token file's, when there is one: its mode is from this one look
    if path is not None:
        st = _usable_token_file(c, config, path)
        if st is None:
            return None, False
    try:
        token = load_token(config.matomo, config.source)
    except ConfigError as exc:
        for problem in exc.problems:
            c.fail(problem, "put the token_auth of a user with write access in it")
        return None, False
    if token is None:
        c.warn(
            f"no token: matomo.token_auth_file is not set and ${TOKEN_ENV} is empty; "
            "import_logs.py then asks Matomo's console for one, which works only on the Matomo "
            "host itself"
        )
        return None, False
    if st is None:
        c.ok(f"token from ${TOKEN_ENV}")
        return token, True
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o004:
        c.warn(f"token file {path} is readable by every user (mode {mode:04o}): chmod o-r {path}")
    else:
        c.ok(f"token file {path} (mode {mode:04o})")
    return token, True


def _usable_token_file(c: Checklist, config: Config, path: Path) -> Optional[os.stat_result]:
    """The token file's stat; or fail (and say None) when it is missing or this user cannot
    read it.

    The two need opposite advice: a missing file is created, an unreadable one is almost
    always right and checked as the wrong user or group.
    """
    key = f"{config.source.name}: matomo.token_auth_file: {path}"
    try:
        st = path.stat()
    except FileNotFoundError:
        c.fail(
            f"{key}: no such file",
            "create it with the token_auth of a user with write access (Matomo: "
            f"Administration > Personal > Security > Auth tokens): install -m 0640 -g "
            f"<the service's group> /dev/null {path}, then put the token in it",
        )
        return None
    except OSError as exc:
        c.fail(
            f"{key}: {who()} cannot reach it ({_reason(exc)})",
            f"give the service's user search (x) permission on {path.parent} and its parents",
        )
        return None
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        c.fail(
            f"{key}: exists but is not readable by {who()} ({_owner(st)})",
            "the service reads it as its user and group: check as the service runs "
            f"({RUN_AS_SERVICE}), or let that user or group read it (chgrp <the service's "
            f"group> {path}; chmod 0640 {path})",
        )
        return None
    except OSError as exc:
        c.fail(f"{key}: cannot read: {_reason(exc)}", "check the file")
        return None
    return st


def check_matomo_tmp(c: Checklist, config: Config) -> None:
    """core:archive writes caches and request files under <matomo>/tmp: test that it can."""
    if not config.archive.enabled or config.matomo.path is None:
        return  # said by check_programs.check_php
    tmp = config.matomo.path / "tmp"
    if not tmp.is_dir():
        c.fail(
            f"Matomo's tmp/ {tmp}: no such directory (core:archive writes there)",
            "check matomo.path; Matomo creates tmp/ when it is installed",
        )
        return
    for sub in ARCHIVE_TMP_DIRS:
        directory = tmp / sub if sub else tmp
        if sub and not directory.is_dir():
            continue
        exc = _cannot_create_file(directory)
        if exc is not None:
            try:
                owner = f"; {_owner(directory.stat())}"
            except OSError:
                owner = ""
            c.fail(
                f"Matomo's tmp/: {who()} cannot create files in {directory} "
                f"({_reason(exc)}{owner}): core:archive would fail",
                "run matomo-rt as the user Matomo's files belong to (the web server's user, "
                f"e.g. www-data), or make {tmp} writable by the service's user (chown -R "
                f"<user> {tmp}), or set archive.enabled = false if another host archives",
            )
            return
    c.ok(f"Matomo's tmp/ {tmp} is writable (core:archive)")


def _cannot_create_file(directory: Path) -> Optional[OSError]:
    """Why this user cannot create a file in `directory` (None: it can; the probe is removed)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".matomo-rt-check.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc
    return None


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
