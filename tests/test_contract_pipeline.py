"""matomo-rt with the REAL import_logs.py against a fake of Matomo's HTTP API.

The double stands in for import_logs.py everywhere else; here the real script (set
MATOMO_RT_IMPORT_LOGS to matomo-log-analytics' import_logs.py) proves the end-to-end claims: every
request reaches Matomo once, also when a bulk POST fails mid-batch and `--skip=N` decides what
is committed. Skipped with the reason when the real script is not available.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from matomo_rt.commands import EXIT_FAILURE, EXIT_OK, run_import
from matomo_rt.config import load

sys.path.insert(0, str(Path(__file__).parent / "doubles"))
from fake_matomo import FakeMatomo

REAL = os.environ.get("MATOMO_RT_IMPORT_LOGS")
pytestmark = pytest.mark.skipif(
    not REAL or not Path(REAL).is_file(),
    reason="set MATOMO_RT_IMPORT_LOGS to a real import_logs.py to run the pipeline contract tests",
)
TOKEN = "fake-token"


def _line(n: int) -> bytes:
    return (
        json.dumps(
            {
                "ip": f"198.51.100.{n % 250 + 1}",
                "host": "www.example.org",
                "path": f"/c/{n}",
                "status": "200",
                "referrer": "-",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
                "length": "512",
                "generation_time_milli": "0.010",
                "date": f"2026-11-27T10:{n // 60 % 60:02d}:{n % 60:02d}+00:00",
            }
        ).encode()
        + b"\n"
    )


def _config(tmp_path: Path, url: str, batch_lines: int) -> Path:
    (tmp_path / "access.log").write_bytes(b"")
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[matomo]
url = "{url}"
import_logs = "{REAL}"
python = "{sys.executable}"
[import]
batch_lines = {batch_lines}
timeout = "60s"
start_at = "beginning"
flags = ["--enable-http-errors", "--enable-http-redirects", "--retry-delay=0",
         "--recorder-max-payload-size=10"]
[state]
dir = "{tmp_path / "state"}"
[[logs]]
name = "web"
path = "{tmp_path / "access.log"}"
"""
    )
    return path


def _paths(matomo: FakeMatomo) -> list[str]:
    return [urlsplit(hit["url"]).path for hit in matomo.hits()]


def test_every_request_reaches_matomo_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MATOMO_TOKEN_AUTH", TOKEN)
    with FakeMatomo(token=TOKEN) as matomo:
        config = load(_config(tmp_path, matomo.url, batch_lines=40))
        with (tmp_path / "access.log").open("ab") as fh:
            fh.write(b"".join(_line(n) for n in range(100)))
        assert run_import(config, None) == EXIT_OK
        with (tmp_path / "access.log").open("ab") as fh:
            fh.write(b"".join(_line(n) for n in range(100, 130)))
        assert run_import(config, None) == EXIT_OK
        assert _paths(matomo) == [f"/c/{n}" for n in range(130)]


def test_a_failed_post_commits_exactly_the_lines_before_it(tmp_path: Path, monkeypatch) -> None:
    """The 4th bulk POST (lines 30-39) fails: --skip=30, 30 lines committed, the rest retried."""
    monkeypatch.setenv("MATOMO_TOKEN_AUTH", TOKEN)
    with FakeMatomo(token=TOKEN, fail_tracking_after_posts=3) as matomo:
        config = load(_config(tmp_path, matomo.url, batch_lines=100))
        with (tmp_path / "access.log").open("ab") as fh:
            fh.write(b"".join(_line(n) for n in range(60)))
        assert run_import(config, None) == EXIT_FAILURE
        assert _paths(matomo) == [f"/c/{n}" for n in range(30)]
        state = json.loads((tmp_path / "state" / "web.state.json").read_text())
        assert state["position"]["current"]["offset"] == sum(len(_line(n)) for n in range(30))
        matomo.fail_tracking_after_posts = None
        assert run_import(config, None) == EXIT_OK
        assert _paths(matomo) == [f"/c/{n}" for n in range(60)]
