"""`matomo-rt init` as a real process: a config that loads, what it found, never an overwrite,
never the token, and a next command that works."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from matomo_rt.config import load
from matomo_rt.init import log_names
from tests.test_check import TOKEN, CheckMatomo, hit

VHOST_COMBINED = (
    'www.example.org:443 192.0.2.10 - - [27/Nov/2026:10:00:00 +0100] "GET / HTTP/1.1" 200 '
    '5123 "-" "Mozilla/5.0"\n'
)
COMBINED = '192.0.2.9 - - [27/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8.5.0"\n'


def matomo_rt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATOMO")}
    return subprocess.run(
        [sys.executable, "-m", "matomo_rt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Matomo's directory with the importer, a JSON log, a combined log, a token file."""
    matomo = tmp_path / "matomo"
    (matomo / "misc" / "log-analytics").mkdir(parents=True)
    (matomo / "misc" / "log-analytics" / "import_logs.py").write_text("# importer\n")
    (matomo / "console").write_text("<?php\n")
    (matomo / "tmp").mkdir()
    (tmp_path / "nginx").mkdir()
    (tmp_path / "nginx" / "access.log").write_text(
        "".join(hit("example.com", n) + "\n" for n in range(4))
    )
    (tmp_path / "apache").mkdir()
    (tmp_path / "apache" / "access.log").write_text(COMBINED * 3)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o640)
    return tmp_path


def init(host: Path, *extra: str, config: str = "config.toml") -> subprocess.CompletedProcess[str]:
    return matomo_rt(
        "-c",
        config,
        "init",
        "--url",
        "https://matomo.example.org/",
        *extra,
        cwd=host,
    )


def test_writes_a_config_that_loads_with_what_it_found(host: Path) -> None:
    (host / "vhost.log").write_text(VHOST_COMBINED * 2)
    done = init(
        host,
        "--path=matomo",
        "--token-file=token",
        "--log=nginx/access.log",
        "--log=apache/access.log",
        "--log=vhost.log",
    )
    assert done.returncode == 0, done.stderr
    config_path = host / "config.toml"
    config = load(config_path)
    assert config.matomo.url == "https://matomo.example.org"
    assert config.matomo.path == host / "matomo"
    assert config.matomo.token_auth_file == host / "token"
    assert [(log.name, log.path, log.log_format.name, log.idsite) for log in config.logs] == [
        ("access.log", host / "nginx" / "access.log", "nginx_json", None),
        # combined lines name no host: its format waits for the site id, commented out
        ("access.log-2", host / "apache" / "access.log", "nginx_json", None),
        ("vhost.log", host / "vhost.log", "common_complete", None),
    ]
    text = config_path.read_text()
    assert TOKEN not in text and TOKEN not in done.stdout + done.stderr
    assert (
        "# Detected: nginx JSON (the log_format of contrib/nginx/matomo-rt-log-format.conf)" in text
    )
    assert (
        "# Detected: combined (nginx's default, Apache's `combined`), 3 of 3 recent lines." in text
    )
    assert '# format = "combined"\n# idsite = N\n' in text
    assert 'format = "vhost_combined"\n' in text
    combined = "combined (nginx's default, Apache's `combined`), 3 of 3 recent lines"
    vhost = (
        "vhost_combined (Apache's `vhost_combined`: host:port, then combined), 2 of 2 recent lines"
    )
    assert done.stdout.splitlines() == [
        f"wrote {config_path}",
        f"  import_logs.py: {host / 'matomo' / 'misc' / 'log-analytics' / 'import_logs.py'}",
        f"  log access.log: {host / 'nginx' / 'access.log'}: nginx JSON (the log_format of "
        "contrib/nginx/matomo-rt-log-format.conf), 4 of 4 recent lines",
        f"  log access.log-2: {host / 'apache' / 'access.log'}: {combined}: its lines name no "
        "host: set its idsite in the config",
        f"  log vhost.log: {host / 'vhost.log'}: {vhost}",
        f"next: runuser -u www-data -g www-data -G adm -- matomo-rt -c {config_path} check",
    ]


def test_idsite_completes_a_log_without_hosts(host: Path) -> None:
    done = init(host, "--path=matomo", "--idsite=3", "--log=apache/access.log")
    assert done.returncode == 0, done.stderr
    [log] = load(host / "config.toml").logs
    assert (log.log_format.name, log.idsite) == ("ncsa_extended", 3)
    assert "; all its lines go to site 3" in done.stdout


def test_never_overwrites(host: Path) -> None:
    existing = host / "config.toml"
    existing.write_text("# mine\n")
    done = init(host, "--path=matomo", "--log=nginx/access.log")
    assert done.returncode == 73
    assert done.stderr == (
        f"matomo-rt: ERROR: init: {existing} exists: init never overwrites a configuration\n"
    )
    assert existing.read_text() == "# mine\n"
    assert sorted(p.name for p in host.iterdir() if p.name.startswith(".")) == []


def test_a_dangling_symlink_is_not_written_through(host: Path) -> None:
    (host / "config.toml").symlink_to(host / "elsewhere.toml")
    done = init(host, "--path=matomo", "--log=nginx/access.log")
    assert done.returncode == 73
    assert not (host / "elsewhere.toml").exists()


def test_a_missing_importer_says_where_it_comes_from(host: Path) -> None:
    (host / "matomo" / "misc" / "log-analytics" / "import_logs.py").unlink()
    done = init(host, "--path=matomo", "--log=nginx/access.log")
    assert done.returncode == 0, done.stderr
    script = host / "matomo" / "misc" / "log-analytics" / "import_logs.py"
    assert (
        f"  import_logs.py: not found at {script}: Matomo releases ship it as "
        "misc/log-analytics/import_logs.py; else get it from "
        "https://github.com/matomo-org/matomo-log-analytics"
    ) in done.stdout.splitlines()
    text = (host / "config.toml").read_text()
    assert f"# import_logs.py is not at {script} yet" in text
    load(host / "config.toml")


def test_bad_options_write_nothing(host: Path) -> None:
    done = matomo_rt(
        "-c", "config.toml", "init", "--url", "ftp://x", "--path=matomo", "--log=a", cwd=host
    )
    assert done.returncode == 2
    assert "matomo.url: 'ftp://x' is not an http(s) URL" in done.stderr
    assert "config.toml" in done.stderr and ".init" not in done.stderr
    assert not (host / "config.toml").exists()
    assert [p for p in host.iterdir() if p.name.startswith(".")] == []
    done = matomo_rt("-c", "config.toml", "init", "--url", "https://x.example", cwd=host)
    assert done.returncode == 2 and "--log" in done.stderr
    done = matomo_rt("-c", "c.toml", "init", "--url", "https://x.example", "--log=a", cwd=host)
    assert done.returncode == 2 and "give --path" in done.stderr


def test_a_missing_directory_is_named_with_how_to_create_it(host: Path) -> None:
    done = init(host, "--path=matomo", "--log=a", config="etc/matomo-rt/config.toml")
    assert done.returncode == 73
    assert f"{host / 'etc' / 'matomo-rt'}: no such directory (create it: install -d" in done.stderr


def test_without_matomo_path_archiving_is_off(host: Path) -> None:
    done = init(host, "--import-logs=matomo/misc/log-analytics/import_logs.py", "--log=x.log")
    assert done.returncode == 0, done.stderr
    config = load(host / "config.toml")
    assert config.archive.enabled is False
    assert config.matomo.import_logs_script == host / "matomo/misc/log-analytics/import_logs.py"
    assert f"  log x.log: {host / 'x.log'}: no such file yet" in done.stdout


def test_log_names_are_distinct_and_valid() -> None:
    paths = [Path("/a/access.log"), Path("/b/access.log"), Path("/c/my log!"), Path("/d/...")]
    assert log_names(paths) == ["access.log", "access.log-2", "my_log", "log"]


def test_help_names_every_option_and_exit_code() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "matomo_rt", "init", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    flat = " ".join(done.stdout.split())
    for option in ("--url", "--path", "--import-logs", "--token-file", "--log"):
        assert option in flat
    assert "0 written, 2 bad options" in flat and "73 the file exists" in flat


@pytest.mark.skipif(shutil.which("php") is None, reason="php is not installed")
def test_the_next_command_passes(host: Path) -> None:
    """init, then the `check` it names (as this user), against a Matomo that knows the host."""
    with CheckMatomo(sites={"example.com": 1}, token=TOKEN) as fake:
        done = matomo_rt(
            "-c",
            "config.toml",
            "init",
            f"--url={fake.url}",
            "--path=matomo",
            "--token-file=token",
            "--log=nginx/access.log",
            cwd=host,
        )
        assert done.returncode == 0, done.stderr
        with (host / "config.toml").open("a") as fh:
            fh.write(f'\n[state]\ndir = "{host / "state"}"\n')  # not /var/lib on a test host
        next_command = done.stdout.splitlines()[-1]
        assert next_command.endswith(f"matomo-rt -c {host / 'config.toml'} check")
        checked = matomo_rt("-c", str(host / "config.toml"), "check", cwd=host)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "[FAIL]" not in checked.stdout
    assert json.dumps(TOKEN) not in checked.stdout
