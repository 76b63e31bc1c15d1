"""Real nginx -> log -> `matomo-rt` (a real process) -> a real Matomo: every request once in
Matomo's own tables, through the faults users meet.

Each test has its own Matomo site; `Scene.assert_exactly_once` compares Matomo's
log_link_visit_action rows per URL with the requests sent (lost: 0 rows, duplicated: 2+).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.e2e.harness import pid_gone, wait_for
from tests.realmatomo.rig import DEADLINE, Scene, access_line

pytestmark = [pytest.mark.e2e]

WRONG_TOKEN = "0123456789abcdef0123456789abcdef"


def test_steady_traffic_arrives_exactly_once(scene: Scene) -> None:
    scene.write_config(batch_lines=20)
    service = scene.start_service()
    for _round in range(3):
        scene.requests(25)
        scene.wait_held()
    scene.request("/missing/1", 404)  # recorded too (--enable-http-errors)
    scene.wait_held()
    service.send(signal.SIGTERM)
    assert service.wait(60) == 0, service.describe()
    scene.assert_exactly_once()
    assert scene.caught_up()
    assert scene.status()["totals"]["imported"] == len(scene.sent)


def test_a_half_written_line_waits_for_its_end(scene: Scene) -> None:
    scene.requests(5)
    line = access_line(scene.host, "/half/0")
    head, tail = line[: len(line) // 2], line[len(line) // 2 :]
    with open(scene.log, "ab") as fh:
        fh.write(head)
    done = scene.run("import")
    assert done.returncode == 0, done.stderr
    scene.assert_exactly_once()  # the 5 requests; nothing of the half line
    assert scene.status()["offset"] == scene.log.stat().st_size - len(head)

    scene.append([tail], ["/half/0"])
    done = scene.run("import")
    assert done.returncode == 0, done.stderr
    scene.assert_exactly_once()


def test_poison_lines_are_quarantined_and_the_rest_arrives(scene: Scene) -> None:
    scene.requests(3)
    poison = [
        b"not json at all\n",
        b"[1, 2, 3]\n",
        access_line(scene.host, "/poison/no-date", date=...),
        b'{"host": "' + scene.host.encode() + b'", "path": "/poison/truncated"\n',
    ]
    normalised = [
        access_line(scene.host, "/fixed/status-number", status=200),
        access_line(scene.host, "/fixed/null-agent", user_agent=None),
        access_line(scene.host, "/fixed/no-generation-time", generation_time_milli=...),
    ]
    scene.append(
        poison + normalised,
        ["/fixed/status-number", "/fixed/null-agent", "/fixed/no-generation-time"],
    )
    scene.requests(3)
    done = scene.run("import")
    assert done.returncode == 0, done.stderr
    scene.assert_exactly_once()
    entry = scene.status()
    assert entry["totals"]["quarantined"] == len(poison), entry
    assert entry["quarantine"]["lines"] == len(poison)
    rows = [json.loads(x) for x in Path(entry["quarantine"]["path"]).read_text().splitlines()]
    assert len(rows) == len(poison)
    assert all(r.get("reason") for r in rows)
    assert entry["lag_bytes"] == 0


def test_two_one_shot_imports_at_once(scene: Scene) -> None:
    scene.write_config(batch_lines=20)
    scene.requests(60)
    first, second = scene.start("import"), scene.start("import")
    codes = sorted([first.wait(DEADLINE), second.wait(DEADLINE)])
    assert codes in ([0, 0], [0, 75]), "\n".join(s.describe() for s in (first, second))
    if codes == [0, 75]:
        loser = first if first.popen.returncode == 75 else second
        assert "held by pid" in loser.log()
    done = scene.run("import")  # whatever the loser left
    assert done.returncode == 0, done.stderr
    scene.assert_exactly_once()


def test_matomo_unreachable_then_back(scene: Scene) -> None:
    scene.write_config(batch_lines=20)
    service = scene.start_service()
    scene.requests(10)
    scene.wait_held()
    port = scene.matomo.port
    scene.matomo.stop_php()
    try:
        scene.requests(30)
        service.wait_log("import failed", timeout=DEADLINE)
        assert scene.status()["last_error"] is not None
    finally:
        scene.matomo.start_php(port)
    scene.wait_held()
    wait_for(scene.caught_up, DEADLINE, "caught up", scene.describe)
    scene.assert_exactly_once()
    assert service.running()


def _brute_force_rows(scene: Scene) -> int:
    (row,) = scene.matomo.db.sql("SELECT COUNT(*) FROM matomo_brute_force_log", "matomo")
    return int(row[0])


def test_wrong_token_pauses_then_the_right_one_delivers(scene: Scene) -> None:
    scene.write_config(batch_lines=20)
    scene.requests(5)
    scene.set_token(WRONG_TOKEN)
    try:
        done = scene.run("import")
        assert done.returncode == 77, done.stderr
        assert "Matomo refused the token" in done.stderr
        assert WRONG_TOKEN not in done.stderr
        assert scene.status()["auth_pause"], scene.status()
        assert _brute_force_rows(scene) > 0  # Matomo counted the failed logins
        assert sum(scene.held().values()) == 0
        scene.set_token(scene.matomo.token)  # the pause lifts when the token changes
        done = scene.run("import")
        assert done.returncode == 0, done.stderr
        scene.assert_exactly_once()
    finally:
        scene.matomo.unblock()
    assert _brute_force_rows(scene) == 0


def _importer_children(pid: int) -> list[int]:
    """Descendants of `pid` running import_logs.py."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == pid and b"import_logs.py" in cmdline:
            found.append(int(entry.name))
    return found


def test_sigkill_mid_import_loses_nothing(scene: Scene) -> None:
    batch = 100
    scene.write_config(batch_lines=batch)
    scene.requests(400)
    service = scene.start_service()
    importer = wait_for(lambda: _importer_children(service.pid), DEADLINE, "an import_logs.py run")
    # Mid-batch: Matomo has some of the lines, not all of them.
    wait_for(lambda: sum(scene.held().values()) > 0, DEADLINE, "the first rows in Matomo")
    service.send(signal.SIGKILL)
    service.wait(30)
    wait_for(lambda: all(pid_gone(p) for p in importer), 30, "the importer to die with it")
    held_at_kill = sum(scene.held().values())
    assert held_at_kill < len(scene.sent), "too late: everything was in already"

    service = scene.start_service()
    wait_for(scene.caught_up, DEADLINE, "caught up after the restart", scene.describe)
    service.send(signal.SIGTERM)
    assert service.wait(60) == 0
    duplicates = scene.assert_at_least_once(max_duplicates=batch)
    totals = scene.status()["totals"]
    assert totals["imported"] + 0 >= len(scene.sent) - batch, totals
    # A kill inside a run leaves its in-flight mark, counted at the restart; a kill between two
    # runs leaves nothing to count, and then nothing was sent twice either.
    assert totals["uncertain_batches"] <= 1, totals
    if duplicates:
        assert totals["uncertain_batches"] == 1, totals
    print(f"SIGKILL mid-import: {duplicates} duplicates; status totals {totals}")


def test_archive_then_visits_summary_agrees_with_the_rows(scene: Scene) -> None:
    scene.write_config(archive=True)
    scene.requests(12)
    scene.request("/missing/x", 404)
    done = scene.run("import")
    assert done.returncode == 0, done.stderr
    scene.assert_exactly_once()
    done = scene.run("archive", timeout=600)
    assert done.returncode == 0, done.stderr
    summary = scene.matomo.api("VisitsSummary.get", idSite=scene.idsite, period="day", date="today")
    (visits,) = scene.matomo.db.sql(
        f"SELECT COUNT(*) FROM matomo_log_visit WHERE idsite = {scene.idsite}", "matomo"
    )
    assert summary["nb_actions"] == sum(scene.held().values()) == len(scene.sent)
    assert summary["nb_visits"] == int(visits[0]) > 0


def test_check_against_the_real_api(scene: Scene) -> None:
    scene.requests(3)
    done = scene.run("check")
    assert done.returncode == 0, done.stdout + done.stderr
    scene.append([access_line("unmapped.example", "/u")], [])
    done = scene.run("check")
    assert "unmapped.example" in done.stdout + done.stderr
    scene.set_token(WRONG_TOKEN)
    try:
        done = scene.run("check")
        assert done.returncode != 0
        assert WRONG_TOKEN not in done.stdout + done.stderr
    finally:
        scene.matomo.unblock()
