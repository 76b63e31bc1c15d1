"""The import_logs.py double (tests/doubles/) against the real thing: the same log through
`matomo-rt import` twice, once into the double, once into the real Matomo with its own
import_logs.py. Matomo must hold exactly the requests the double says it holds, and
matomo-rt's counts must agree. Every fast test trusts the double; this keeps it honest.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import IMPORT_DOUBLE
from tests.realmatomo.rig import Scene, access_line

pytestmark = [pytest.mark.e2e]


def _lines(host: str) -> list[tuple[str, bytes]]:
    """(path, line): what a site's log holds on a normal day, and the odd line."""
    cases: list[tuple[str, dict]] = [
        ("/page/plain", {}),
        ("/page/query?a=1&b=two", {}),
        ("/page/not-found", {"status": "404"}),
        ("/page/moved", {"status": "301"}),
        ("/page/found", {"status": "302"}),
        ("/page/server-error", {"status": "500"}),
        ("/page/not-modified", {"status": "304"}),
        ("/static/style.css", {}),
        ("/static/logo.png", {}),
        ("/page/googlebot", {"user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}),
        ("/page/no-agent", {"user_agent": ""}),
        ("/page/post", {"method": "POST"}),
        ("/page/head", {"method": "HEAD"}),
        ("/page/referred", {"referrer": "https://search.example/?q=matomo"}),
        ("/page/other-ip", {"ip": "203.0.113.9"}),
        ("/page/ipv6", {"ip": "2001:db8::1"}),
        ("/page/unmapped-host", {"host": "unmapped.example"}),
        ("/page/upper-HOST", {"host": host.upper()}),
    ]
    return [(path, access_line(fields.pop("host", host), path, **fields)) for path, fields in cases]


def _import(scene: Scene, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        scene.argv("import"),
        capture_output=True,
        text=True,
        env={**scene.env(), **env},
        timeout=600,
    )


def test_matomo_holds_what_the_double_says_it_holds(scene: Scene, tmp_path: Path) -> None:
    cases = _lines(scene.host)
    with open(scene.log, "ab") as fh:
        fh.write(b"".join(line for _, line in cases))

    # 1. The double, with the same site mapping as Matomo (only this host is a site).
    double_state = scene.state.with_name("state-double")
    record, control = tmp_path / "record", tmp_path / "control.json"
    control.write_text(json.dumps({"sites": {scene.host: scene.idsite}}))
    real_config = scene.config_path.read_text()
    scene.config_path.write_text(
        real_config.replace(
            f'path = "{scene.matomo.root}"',
            f'path = "{scene.matomo.root}"\nimport_logs = "{IMPORT_DOUBLE}"',
        ).replace(f'dir = "{scene.state}"', f'dir = "{double_state}"')
    )
    done = _import(
        scene, {"IMPORT_DOUBLE_RECORD": str(record), "IMPORT_DOUBLE_CONTROL": str(control)}
    )
    assert done.returncode == 0, done.stderr
    by_double = sorted(json.loads(line)["path"] for line in record.read_text().splitlines())
    double_totals = scene.status()["totals"]

    # 2. The real import_logs.py and Matomo.
    scene.config_path.write_text(real_config)
    done = _import(scene, {})
    assert done.returncode == 0, done.stderr
    held = scene.held()
    by_matomo = sorted(held.elements())
    real_totals = scene.status()["totals"]

    assert 0 < len(by_matomo) < len(cases)  # some recorded, some not (the unmapped host)
    assert by_matomo == by_double, (
        f"Matomo holds {sorted(set(by_matomo) - set(by_double))} the double does not; "
        f"the double holds {sorted(set(by_double) - set(by_matomo))} Matomo does not"
    )
    assert real_totals == double_totals
