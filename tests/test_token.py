"""The service's token: re-read when the file changes, the last good one kept (said once) while
the file is broken."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from matomo_rt.config import MatomoConfig
from matomo_rt.token import TokenFile


def write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    path.chmod(0o600)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_changed_file_is_read_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "token"
    write(path, "first\n", 1_000_000_000)
    tokens = TokenFile(MatomoConfig(token_auth_file=path))
    assert tokens.current() == "first"
    write(path, "second\n", 2_000_000_000)
    with caplog.at_level(logging.INFO):
        assert tokens.current() == "second"
        assert tokens.current() == "second"
    assert caplog.text.count("the token file changed: using the new token") == 1
    assert "second" not in caplog.text  # never the token itself


def test_same_size_and_mtime_but_another_inode_is_a_change(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write(path, "aaaa\n", 1_000_000_000)
    tokens = TokenFile(MatomoConfig(token_auth_file=path))
    replacement = tmp_path / "token.new"
    write(replacement, "bbbb\n", 1_000_000_000)
    os.replace(replacement, path)  # how editors and config management replace a file
    assert tokens.current() == "bbbb"


def test_a_broken_file_keeps_the_last_good_token_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "token"
    write(path, "good\n", 1_000_000_000)
    tokens = TokenFile(MatomoConfig(token_auth_file=path))
    write(path, "", 2_000_000_000)
    with caplog.at_level(logging.INFO):
        assert tokens.current() == "good"
        assert tokens.current() == "good"
        assert caplog.text.count("is empty (put the token_auth in it); keeping the token") == 1
        write(path, "better\n", 3_000_000_000)
        assert tokens.current() == "better"
    assert "the token file is readable again" in caplog.text


def test_without_a_file_the_environment_token_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATOMO_TOKEN_AUTH", "from-env")
    tokens = TokenFile(MatomoConfig())
    monkeypatch.setenv("MATOMO_TOKEN_AUTH", "changed")
    assert tokens.current() == "from-env"  # the environment of a process does not change
