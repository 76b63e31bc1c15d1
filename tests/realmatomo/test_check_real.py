"""`check` against a real Matomo 5 behind PHP's built-in server: the wrong sub-path a new user
typed (issue 10), answered by the web server's own 404 page, not by Matomo."""

from __future__ import annotations

from tests.realmatomo.rig import Scene


def test_a_wrong_sub_path_is_no_matomo_at_this_url(scene: Scene) -> None:
    url = f"{scene.matomo.url}/matomo-wrong"
    scene.write_config(url=url)
    done = scene.run("check")
    assert done.returncode == 1, done.stdout + done.stderr
    [failure] = [line for line in done.stdout.splitlines() if line.startswith("[FAIL]")]
    assert failure.startswith(
        f"[FAIL] no Matomo answers at {url}: {url}/index.php is HTTP 404 (404 Not Found: The "
        "requested resource /matomo-wrong/index.php"
    )
    assert "set matomo.url to Matomo's base URL" in failure
    assert "<" not in done.stdout
    scene.write_config()
    scene.requests(1)
    done = scene.run("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"answers at {scene.matomo.url}" in done.stdout
