"""The configuration loader: strict (unknown keys are errors), complete (every problem at once),
and specific (each problem names the file and the key path), so one edit fixes a broken file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from matomo_rt import config as cfg
from matomo_rt.config import ConfigError, load, parse_duration, parse_size

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[matomo]
url = "https://matomo.example.org/"
path = "/srv/matomo"

[[logs]]
path = "/var/log/nginx/access.log"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str, name: str = "config.toml") -> list[str]:
    """The problems a file yields; it must yield some."""
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, text, name))
    assert str(exc.value) == "\n".join(exc.value.problems)
    return exc.value.problems


# -- defaults ---------------------------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    """What DESIGN §3/§6 promise when a key is left out."""
    config = load(write(tmp_path, MINIMAL))
    assert config.matomo.url == "https://matomo.example.org"  # trailing slash dropped
    assert config.matomo.import_logs_script == Path("/srv/matomo/misc/log-analytics/import_logs.py")
    assert config.matomo.python == "python3"
    imp = config.import_
    assert (imp.interval, imp.batch_lines, imp.batch_bytes) == (60.0, 20_000, 8 * 1024 * 1024)
    assert (imp.recorders, imp.on_uncertain, imp.start_at) == (1, "resend", "end")
    assert imp.workers == 1  # the one-liner's load on Matomo
    assert imp.flags == ("--enable-http-errors", "--enable-http-redirects")
    assert (config.archive.enabled, config.archive.schedule) == (True, "5 * * * *")
    assert config.state.dir == Path("/var/lib/matomo-rt")
    [log] = config.logs
    assert (log.name, log.idsite) == ("access.log", None)
    assert log.path == Path("/var/log/nginx/access.log")
    assert config.start_at(log) == "end"


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            """
            [matomo]
            token_auth_file = "secrets/token"
            [state]
            dir = "state"
            [[logs]]
            path = "logs/access.log"
            start_at = "beginning"
            """,
        )
    )
    assert config.matomo.token_auth_file == tmp_path / "secrets" / "token"
    assert config.state.dir == tmp_path / "state"
    assert config.logs[0].path == tmp_path / "logs" / "access.log"
    assert config.start_at(config.logs[0]) == "beginning"


# -- unknown keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[imports]\ninterval = 5\n", "config.toml: imports: unknown key"),
        ("[import]\nbatchlines = 5\n", "config.toml: import.batchlines: unknown key"),
        ("[matomo]\ntoken = 'x'\n", "config.toml: matomo.token: unknown key"),
        (
            "[[logs]]\npath = '/a'\n[[logs]]\npath = '/b'\npth = 'x'\n",
            "config.toml: logs[1].pth: unknown key",
        ),
        ("[archive]\ncron = '5 * * * *'\n", "config.toml: archive.cron: unknown key"),
        ("verbose = true\n", "config.toml: verbose: unknown key"),
    ],
)
def test_unknown_keys_are_rejected_with_their_key_path(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A typo must never be silently ignored (the default would apply instead)."""
    assert problems(tmp_path, text) == [expected]


# -- every problem at once, each with file and key path ------------------------------------------


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
        color = "blue"

        [matomo]
        url = "ftp://matomo.example.org"

        [import]
        interval = "soon"
        batch_bytes = "8 pebibytes"
        on_uncertain = "retry"
        flags = ["--token-auth=abc"]

        [[logs]]
        name = "web"
        path = "/var/log/a.log"
        idsite = 0

        [[logs]]
        name = "web"
        path = "/var/log/b.log"

        [[logs]]
        name = "no-path"

        [archive]
        schedule = "every hour"

        [metrics]
        listen = "9464"
        """,
        name="site.toml",
    )
    keys = [p.split(": ")[1] for p in found]
    assert keys == [
        "color",
        "matomo.url",
        "import.interval",
        "import.batch_bytes",
        "import.flags",
        "import.on_uncertain",
        "logs[0].idsite",
        "logs[1].name",
        "logs[2].path",
        "archive.schedule",
        "metrics.listen",
    ]
    assert all(p.startswith("site.toml: ") for p in found)
    assert all("\n" not in p for p in found)
    assert "never put the token in flags" in found[4]
    assert "abc" not in "\n".join(found)  # the token itself is never echoed


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("[matomo]\nurl = 'matomo.example.org'\n", "matomo.url", "http(s) URL"),
        ("[matomo]\nurl = 'https://m.example.org/?a=1'\n", "matomo.url", "without ?query"),
        ("[matomo]\npython = ''\n", "matomo.python", "non-empty"),
        ("[import]\nbatch_lines = 0\n", "import.batch_lines", "above 0"),
        ("[import]\nbatch_lines = true\n", "import.batch_lines", "above 0"),
        ("[import]\nrecorders = 1.5\n", "import.recorders", "above 0"),
        ("[import]\nworkers = 0\n", "import.workers", "above 0"),
        ("[import]\nworkers = 17\n", "import.workers", "at most 16"),
        ("[import]\nworkers = 4\nrecorders = 2\n", "import.workers", "one recorder"),
        (
            "[import]\nworkers = 2\n[[logs]]\npath = '/a'\nflags = ['--recorders=3']\n",
            "import.workers",
            "--skip=N stays exact",
        ),
        ("[import]\nstart_at = 'middle'\n", "import.start_at", "'beginning', 'end'"),
        ("[import]\nflags = 'x'\n", "import.flags", "list of strings"),
        ("[import]\nflags = ['idsite=1']\n", "import.flags", "options start with -"),
        ("[import]\ninterval = '500ms'\n", "import.interval", "at least 1s"),
        ("[archive]\nenabled = 'yes'\n", "archive.enabled", "true or false"),
        ("[archive]\nschedule = '61 * * * *'\n", "archive.schedule", "61"),
        ("[archive]\ntimeout = 0\n", "archive.timeout", "more than 0"),
        ("[service]\nstop_timeout = '-5s'\n", "service.stop_timeout", "not a duration"),
        ("[metrics]\nlisten = 'localhost:99999'\n", "metrics.listen", "HOST:PORT"),
        ("matomo = 5\n", "matomo", "must be a table"),
        ("logs = 5\n", "logs", "array of tables"),
        ("logs = [5]\n", "logs[0]", "must be a table"),
        ("[[logs]]\npath = '/a'\nname = 'a b'\n", "logs[0].name", "letters, digits"),
        ("[[logs]]\npath = '/a'\nstart_at = 'now'\n", "logs[0].start_at", "'beginning'"),
        (
            "[[logs]]\npath = '/x/access.log'\n[[logs]]\npath = '/y/access.log'\n",
            "logs[1].name",
            "used twice",
        ),
    ],
)
def test_each_error_names_the_file_and_key_path(
    tmp_path: Path, text: str, key: str, says: str
) -> None:
    found = problems(tmp_path, text, name="matomo-rt.toml")
    assert len(found) == 1, found
    prefix = f"matomo-rt.toml: {key}: "
    assert found[0].startswith(prefix), found[0]
    assert says in found[0]


# -- durations and sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        (" 10 s ", 10.0),
        ("42", 42.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    """Numbers are seconds; strings carry a unit."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5x", "", "m5", "-5s", 0, -1, "0s", True, [], "5 minutes"])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_durations_in_the_file(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            MINIMAL
            + '[import]\ninterval = "5s"\ntimeout = "5m"\n[archive]\ntimeout = 90\n'
            + '[service]\nstop_timeout = "1.5m"\n',
        )
    )
    assert (config.import_.interval, config.import_.timeout) == (5.0, 300.0)
    assert config.archive.timeout == 90.0
    assert config.service.stop_timeout == 90.0


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (8388608, 8388608),
        ("8MiB", 8388608),
        ("512KiB", 524288),
        ("1GiB", 1 << 30),
        ("8M", 8388608),
        ("1MB", 1_000_000),
        ("100", 100),
        ("64B", 64),
        ("8 MiB", 8388608),
    ],
)
def test_sizes(value: object, size: int) -> None:
    """Plain numbers are bytes; binary (KiB, M) and decimal (MB) units are both understood."""
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["8mb", "8 pebibytes", "", "-1", 0, 1.5, True, "1.5MiB"])
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_size_in_the_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL + '[import]\nbatch_bytes = "1MiB"\nbatch_lines = 500\n'))
    assert (config.import_.batch_bytes, config.import_.batch_lines) == (1 << 20, 500)


# -- the file itself -------------------------------------------------------------------------------


def test_invalid_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A syntax error stops everything else: one line, with the place, not a traceback."""
    found = problems(tmp_path, "[matomo]\nurl = https://x\n")
    assert len(found) == 1
    assert found[0].startswith("config.toml: not valid TOML: ")
    assert "line 2" in found[0] and "\n" not in found[0]


def test_missing_file_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path / "nope.toml")
    [problem] = exc.value.problems
    assert str(tmp_path / "nope.toml") in problem and "MATOMO_RT_CONFIG" in problem


def test_config_path_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATOMO_RT_CONFIG", "/etc/other.toml")
    assert cfg.default_config_path() == Path("/etc/other.toml")
    monkeypatch.delenv("MATOMO_RT_CONFIG")
    assert cfg.default_config_path() == Path("/etc/matomo-rt/config.toml")


def test_unknown_log_name_lists_the_known_ones(tmp_path: Path) -> None:
    config = load(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match=r"config.toml: .*'other'.*known: access.log"):
        config.log("other")


def test_config_is_frozen(tmp_path: Path) -> None:
    """A reload builds a new Config; nothing mutates the running one."""
    config = load(write(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        config.import_.interval = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "flags", [["--token-auth", "s3cret"], ["--token_auth=s3cret"], ["--token-auth=s3cret"]]
)
def test_token_in_flags_is_refused_without_echoing_it(tmp_path: Path, flags: list[str]) -> None:
    """The token must not reach argv (ps shows it), nor the error that refuses it."""
    found = problems(tmp_path, f"[archive]\nflags = {flags!r}\n".replace("'", '"'))
    assert len(found) == 1 and "archive.flags" in found[0]
    assert "s3cret" not in found[0]


def test_example_config_loads() -> None:
    """config.example.toml documents every key with its default: it must load."""
    example = ROOT / "config.example.toml"
    if not example.exists():
        pytest.skip("config.example.toml is not written yet")
    load(example)


@pytest.mark.parametrize(
    "flag", ["--output=/tmp/x", "--dry-run", "--skip=10", "--url=http://x", "--log-format-name=x"]
)
def test_import_flags_that_break_the_commit_protocol_are_refused(tmp_path: Path, flag: str) -> None:
    """Flags matomo-rt sets itself, or with which no batch could be committed truthfully."""
    found = problems(tmp_path, f'[import]\nflags = ["{flag}"]\n')
    assert len(found) == 1 and "import.flags" in found[0] and flag.split("=")[0] in found[0]


@pytest.mark.parametrize(
    ("flag", "option"),
    [
        ("--dry", "--dry-run"),
        ("--dry-r", "--dry-run"),
        ("--tok=s3cret", "--token-auth"),
        ("--token=s3cret", "--token-auth"),
        ("--ski=10", "--skip"),
        ("--out=/tmp/x", "--output"),
        ("--log-format-n=x", "--log-format-name"),
    ],
)
def test_abbreviations_of_refused_flags_are_refused_naming_the_option(
    tmp_path: Path, flag: str, option: str
) -> None:
    """import_logs.py's argparse takes any unambiguous prefix: `--dry` is `--dry-run`, so every
    batch would be committed while nothing reaches Matomo, and `--tok=` passes the token on argv.
    """
    found = problems(tmp_path, f'[import]\nflags = ["{flag}"]\n')
    assert len(found) == 1 and "import.flags" in found[0]
    assert f"abbreviates {option}" in found[0]
    assert "s3cret" not in found[0]


@pytest.mark.parametrize(
    "flag",
    [
        "--auth-password=pw-s3cret",
        "--auth-user=bob",
        "--auth-pass=pw-s3cret",
        "--auth-u=bob",
        "--password=pw-s3cret",
        "--login=bob",
    ],
)
def test_credentials_in_flags_are_refused_without_echoing_them(tmp_path: Path, flag: str) -> None:
    """Credentials on import_logs.py's command line show in `ps` and in `-v` logs."""
    found = problems(tmp_path, f'[[logs]]\npath = "/x.log"\nflags = ["{flag}"]\n')
    assert len(found) == 1 and "logs[0].flags" in found[0]
    assert "pw-s3cret" not in found[0]
    assert "ps" in found[0]


def test_every_full_option_that_is_not_refused_is_accepted(tmp_path: Path) -> None:
    """The prefix rule must not refuse a real option (the double carries the real option set)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "import_logs_double_options", ROOT / "tests" / "doubles" / "import_logs_double.py"
    )
    assert spec is not None and spec.loader is not None
    double = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(double)
    options = [o for o in double.build_parser()._option_string_actions if o.startswith("--")]
    accepted = [o for o in options if o not in cfg.IMPORT_FLAGS_REFUSED]
    assert "--enable-http-errors" in accepted and "--debug" in accepted
    flags = ", ".join(f'"{o}=1"' for o in accepted)
    load(write(tmp_path, MINIMAL + f"flags = [{flags}]\n"))


def test_every_refused_flag_of_a_list_is_named_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, '[import]\nflags = ["--dry", "--auth-password=pw-s3cret"]\n')
    assert len(found) == 1
    assert "--dry: abbreviates --dry-run" in found[0] and "--auth-password:" in found[0]
    assert "pw-s3cret" not in found[0]
