"""Command line: parse, configure logging, dispatch, map errors to exit codes. No logic here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from matomo_rt import __version__
from matomo_rt.errors import ConfigError
from matomo_rt.tail import LockedError, ReaderError, StateError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `tail` starts faster
if TYPE_CHECKING:
    from typing import Callable, Optional

    from matomo_rt.config import Config

# Exit codes (documented in README.md). Values follow sysexits.h where one fits.
EXIT_OK = 0
EXIT_FAILURE = 1  # the work failed (importer, archiver); the reason is logged
EXIT_USAGE = 2  # bad command line
EXIT_DATAERR = 65  # most recent lines of a log are not in its configured format
EXIT_NOINPUT = 66  # the log file is missing or unreadable
EXIT_CANTCREAT = 73  # the state cannot be written
EXIT_TEMPFAIL = 75  # another matomo-rt holds the source's lock: try again later
EXIT_NOPERM = 77  # Matomo refused the token (imports paused for an hour or until it changes)
EXIT_CONFIG = 78  # the configuration is invalid

log = logging.getLogger("matomo_rt")


def _setup_logging(verbosity: int) -> None:
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity < -1:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("matomo-rt: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # APScheduler logs every job run at INFO: only with -vv.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)


def _cmd_tail(args: argparse.Namespace) -> int:
    from matomo_rt.tail.logtail import run_tail

    logfile = args.file or args.logfile
    if logfile is None:
        raise SystemExit("matomo-rt tail: give the log file (tail -f FILE or tail FILE)")
    offset = args.offset_file or args.offsetfile
    return run_tail(
        Path(logfile),
        Path(offset) if offset else None,
        start_at=args.start_at,
        test_mode=args.test,
    )


def _load_config(args: argparse.Namespace) -> Config:
    from matomo_rt.config import default_config_path, load

    return load(Path(args.config) if args.config else default_config_path())


def _cmd_import(args: argparse.Namespace) -> int:
    from matomo_rt.commands import run_import

    config = _load_config(args)
    return run_import(config, args.log or None, dry_run=args.dry_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from matomo_rt.config import default_config_path, load
    from matomo_rt.service import run_service

    path = Path(args.config) if args.config else default_config_path()
    return run_service(load(path), path)


def _cmd_archive(args: argparse.Namespace) -> int:
    from matomo_rt.archiver import FAILURE, TIMEOUT, run_archive

    config = _load_config(args)
    result = run_archive(config, progress=True)
    if result.unrecorded is not None:  # core:archive ran; `status` will not know it did
        log.error(
            "%s; core:archive ran, but `status` shows the previous run until a run is"
            " recorded: free space on state.dir's file system or make it writable",
            result.unrecorded,
        )
    if result.outcome in (FAILURE, TIMEOUT):
        return EXIT_FAILURE
    return EXIT_OK if result.unrecorded is None else EXIT_CANTCREAT


def _cmd_seek(args: argparse.Namespace) -> int:
    from matomo_rt.commands import run_seek

    return run_seek(_load_config(args), args.log, args.to)


def _cmd_import_files(args: argparse.Namespace) -> int:
    from matomo_rt.import_files import run_import_files

    config = _load_config(args)
    return run_import_files(
        config, [Path(p) for p in args.files], format_name=args.format, idsite=args.idsite
    )


def _cmd_status(args: argparse.Namespace) -> int:
    from matomo_rt import status, status_text

    config = _load_config(args)
    report = status.collect(config)
    if args.json:
        print(status.render_json(report), end="")
    else:
        print(status_text.render_text(report), end="")
    return status.status_exit_code(report)


def _cmd_check(args: argparse.Namespace) -> int:
    from matomo_rt.check import run_check

    return run_check(_load_config(args))


def _cmd_init(args: argparse.Namespace) -> int:
    from matomo_rt.config import DEFAULT_CONFIG_PATH, default_config_path
    from matomo_rt.init import InitError, run_init

    target = Path(args.config) if args.config else default_config_path()
    try:
        run_init(
            target,
            url=args.url,
            matomo_path=args.path,
            import_logs=args.import_logs,
            token_file=args.token_file,
            logs=args.log,
            out=sys.stdout,
            default_target=target == DEFAULT_CONFIG_PATH,
            idsite=args.idsite,
        )
    except InitError as exc:
        log.error("init: %s", exc)
        return exc.exit_code
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matomo-rt",
        description="Stream web-server logs into Matomo: every request exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"matomo-rt {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="configuration file (default: $MATOMO_RT_CONFIG or /etc/matomo-rt/config.toml)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="warnings only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tail = sub.add_parser(
        "tail",
        help="print lines added to a log since the last call (logtail drop-in)",
        description="Print the complete lines added to FILE since the offset in OFFSET_FILE, "
        "following rotations (renamed, dated, compressed, copytruncated), then save the "
        "new offset. Exit codes: 0 ok, 1 output failed (offset kept), 66 no such log, "
        "73 offset file not writable, 75 another instance runs on this offset file.",
    )
    tail.add_argument("-f", dest="file", metavar="FILE", help="the log file")
    tail.add_argument(
        "-o", dest="offset_file", metavar="OFFSET_FILE", help="offset file (default FILE.offset)"
    )
    tail.add_argument("-t", dest="test", action="store_true", help="do not save the new offset")
    tail.add_argument(
        "--start-at",
        choices=("beginning", "end"),
        default="beginning",
        help="first run without an offset file: print the whole file (default, as logtail) "
        "or only lines added from now on",
    )
    tail.add_argument("logfile", nargs="?", help=argparse.SUPPRESS)
    tail.add_argument("offsetfile", nargs="?", help=argparse.SUPPRESS)
    tail.set_defaults(func=_cmd_tail)

    imp = sub.add_parser(
        "import",
        help="import what is new in every log now, until caught up (for cron/timers)",
        description="One pass over every configured log (or those named with --log): read new "
        "lines, check them, hand them to import_logs.py in bounded batches, and commit each "
        "batch only once Matomo holds it. Exit codes: 0 caught up, 1 an import failed (the "
        "offset was kept; it is retried next time), 65 most recent lines of a log were "
        "quarantined or unparseable (the log is in another format), 66 a log file is missing "
        "or unreadable, 73 the state cannot be written, 75 another matomo-rt works on a log, "
        "77 Matomo refused the token, 78 invalid configuration.",
    )
    imp.add_argument("--log", action="append", metavar="NAME", help="only this log (repeatable)")
    imp.add_argument(
        "--dry-run",
        action="store_true",
        help="read and check lines and run import_logs.py with --dry-run; commit nothing",
    )
    imp.set_defaults(func=_cmd_import)

    run = sub.add_parser(
        "run",
        help="the service: import every log on an interval and archive on a schedule",
        description="Run in the foreground (systemd Type=notify): one import job per log every "
        "import.interval, core:archive on archive.schedule. SIGTERM/SIGINT finish the running "
        "batch and exit 0 (within service.stop_timeout); SIGHUP reloads the configuration (an "
        "invalid one is refused and the running one kept). Exit codes: 0 stopped, 75 another "
        "matomo-rt works on a log, 78 invalid configuration.",
    )
    run.set_defaults(func=_cmd_run)

    arch = sub.add_parser(
        "archive",
        help="run core:archive once now",
        description="Run `php <matomo.path>/console core:archive --url=<matomo.url>` plus "
        "archive.flags, never two at once. Exit codes: 0 done (also when core:archive only "
        "logged warnings), 1 failed or timed out, 73 core:archive worked but its record "
        "(archive.state.json in state.dir) cannot be written, 75 another archive runs, 78 "
        "invalid configuration.",
    )
    arch.set_defaults(func=_cmd_archive)

    seek = sub.add_parser(
        "seek",
        help="move a log's position: oldest, start, end, or a byte offset",
        description="Set where the next import of a log starts: 'oldest' (every rotated "
        "generation beside it, compressed ones included, oldest first, then the live file; "
        "what `import-files` imported is left out, what this log read before is read again), "
        "'start' (its live file from the first line), 'end' (after its last complete line) or "
        "a byte offset that starts a line. Except with 'oldest', rotated files beside it count "
        "as read. Refused while another matomo-rt works "
        "on the log (exit 75). Use it after a corrupt state file was moved aside.",
    )
    seek.add_argument("--log", required=True, metavar="NAME", help="the log's name")
    seek.add_argument(
        "--to", required=True, metavar="oldest|start|end|BYTES", help="the new position"
    )
    seek.set_defaults(func=_cmd_seek)

    hist = sub.add_parser(
        "import-files",
        help="import closed log files (history: plain, .gz, .bz2, .xz) once each",
        description="Import each FILE once, oldest first, with the same commit protocol as "
        "the live logs: resumable at batch granularity after a crash or Ctrl-C (run the same "
        "command again), progress while it reads every file for its identity and then imports "
        "them (a bar with ETA on a terminal, a line every 10 s otherwise), a closing table per "
        "file. A "
        "file is known by its content, so a renamed or compressed file is not imported twice "
        "('already imported'); files a configured log reads itself are refused with the "
        "reason. Format, site and flags: --format/--idsite, else those of the configured log "
        "the file was rotated from, else nginx_json. Exit codes: 0 every file imported (now "
        "or before), 1 a file failed or was refused, 66 a file is missing or unreadable, 75 "
        "another matomo-rt imports the same file, 78 invalid configuration.",
    )
    hist.add_argument("files", nargs="+", metavar="FILE", help="closed log files")
    hist.add_argument("--format", metavar="F", help="their format (as logs[].format)")
    hist.add_argument("--idsite", type=int, metavar="N", help="record them all in site N")
    hist.set_defaults(func=_cmd_import_files)

    stat = sub.add_parser(
        "status",
        help="per log: position, lag, last success and error, totals; last archive",
        description="Show what every log's state says, also while the service runs, and the "
        "health verdict: every problem (a log missing, unreadable, in the wrong format or "
        "stalled; hosts matching no site; imports failing or paused; core:archive failing or "
        "stale) with what to do. Exit codes: 0 all healthy, 1 at least one problem.",
    )
    stat.add_argument("--json", action="store_true", help="machine-readable output")
    stat.set_defaults(func=_cmd_status)

    chk = sub.add_parser(
        "check",
        help="check config, files, interpreters, Matomo, the token and host mapping",
        description="A checklist of everything an import needs, each failure with its way "
        "out. Exit code 1 when anything fails.",
    )
    chk.set_defaults(func=_cmd_check)

    ini = sub.add_parser(
        "init",
        help="write a first, commented configuration file; never overwrites one",
        description="Write a commented configuration to the file given before the command "
        "(`matomo-rt -c FILE init …`; default: $MATOMO_RT_CONFIG or /etc/matomo-rt/config.toml) "
        "from these options: import_logs.py is looked for under "
        "--path (misc/log-analytics/import_logs.py; if it is missing, init says where to get "
        "it), and each --log's format is detected from its last lines and written (a format "
        "without a host per line also needs --idsite). The token itself is never written, "
        "only --token-file's path. Then run the `check` it names. Exit codes: "
        "0 written, 2 bad options (e.g. a URL that is not http(s)), 73 the file exists (it is "
        "never overwritten) or cannot be created.",
    )
    ini.add_argument("--url", required=True, help="Matomo's base URL (where its login page is)")
    ini.add_argument(
        "--path", metavar="DIR", help="Matomo's directory (import_logs.py and console are in it)"
    )
    ini.add_argument(
        "--import-logs",
        metavar="FILE",
        help="import_logs.py elsewhere than under --path (without --path, archiving is disabled)",
    )
    ini.add_argument(
        "--token-file",
        metavar="FILE",
        help="the file holding the token_auth (default: none; $MATOMO_TOKEN_AUTH is used)",
    )
    ini.add_argument(
        "--idsite",
        type=int,
        metavar="N",
        help="the Matomo site of logs whose lines name no host (combined, common): written as "
        "their idsite",
    )
    ini.add_argument(
        "--log",
        action="append",
        required=True,
        metavar="FILE",
        help="an access log to import (repeatable)",
    )
    ini.set_defaults(func=_cmd_init)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose - args.quiet)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return EXIT_CONFIG
    except LockedError as exc:
        log.error("%s", exc)
        return EXIT_TEMPFAIL
    except StateError as exc:
        log.error("%s", exc)
        return EXIT_CANTCREAT
    except ReaderError as exc:
        log.error("%s", exc)
        return EXIT_NOINPUT
    except KeyboardInterrupt:
        return 130
