"""The session's Matomo (contrib/demo/localmatomo.py) and one scene per test.

MATOMO_RT_MATOMO names the Matomo to use: an official release zip, a .tar.xz/.tar.gz with a
top folder `matomo/`, or an unpacked Matomo directory (copied, never changed). Without it, or
without php/MariaDB/nginx, every test here skips with the reason. Under pytest-xdist each worker
starts its own Matomo (own ports and directories); .ci/run runs this suite in one process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from contrib.demo import localmatomo
from tests.e2e.nginx import NGINX, traversable_dir
from tests.realmatomo.rig import Scene


@pytest.fixture(scope="session")
def matomo() -> Iterator[localmatomo.Matomo]:
    try:
        source = localmatomo.requirements(os.environ.get("MATOMO_RT_MATOMO"))
    except localmatomo.Missing as exc:
        pytest.skip(str(exc))
    # Not pytest's tmp_path: it is 0700, and MariaDB runs as `mysql`.
    base = Path(tempfile.mkdtemp(prefix="matomo-rt-matomo-"))
    try:
        instance = localmatomo.start(source, base)
        try:
            yield instance
        finally:
            instance.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def scene(matomo: localmatomo.Matomo) -> Iterator[Scene]:
    """A new site, nginx on a free port writing the contrib log format, matomo-rt configured."""
    if NGINX is None:
        pytest.skip("nginx is not installed (apt install nginx)")
    with traversable_dir("matomo-rt-real-") as base:
        s = Scene(base, matomo)
        s.nginx.start()
        s.write_config()
        try:
            yield s
        finally:
            s.cleanup()


@pytest.fixture
def bare_scene(matomo: localmatomo.Matomo) -> Iterator[Scene]:
    """A new site and matomo-rt's directories, no web server: the test starts its own."""
    with traversable_dir("matomo-rt-real-") as base:
        s = Scene(base, matomo)
        try:
            yield s
        finally:
            s.cleanup()
