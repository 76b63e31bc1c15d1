"""Every logrotate mode (contrib/logrotate/matomo-rt and its variations) while `matomo-rt run`
imports into a real Matomo: each request once in Matomo's tables.

With rename + reopen (create, dateext, compress + delaycompress) requests also go out while
logrotate runs, so nginx writes into the renamed file before it reopens. With `compress` alone
and with copytruncate, logrotate itself loses lines written during the rotation, whatever reads
the log (contrib/ says so): those modes rotate between requests only.
"""

from __future__ import annotations

import signal

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.nginx import ROTATION_MODES, Logrotate, needs_logrotate
from tests.realmatomo.rig import DEADLINE, Scene

pytestmark = [pytest.mark.e2e, needs_logrotate]

QUIET_ONLY = ("compress", "copytruncate")


@pytest.mark.parametrize("mode", ROTATION_MODES)
def test_every_request_once_across_rotations(scene: Scene, mode: str) -> None:
    scene.write_config(batch_lines=20)
    rotate = Logrotate(mode, scene.nginx, scene.base)
    service = scene.start_service()
    scene.requests(15)
    for _round in range(2):
        if mode in QUIET_ONLY:
            rotate.rotate()  # every line is written: raw_get returns once nginx logged it
        else:
            proc = rotate.start()
            scene.requests(10)  # some land in the renamed file, before nginx reopens
            rotate.finish(proc)
        scene.requests(15)
    scene.wait_held()
    wait_for(scene.caught_up, DEADLINE, "caught up", scene.describe)
    service.send(signal.SIGTERM)
    assert service.wait(60) == 0, service.describe()
    scene.assert_exactly_once()
