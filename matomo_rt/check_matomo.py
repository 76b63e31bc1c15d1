"""`check`, the Matomo side: reachable at its URL, the token accepted and allowed to write,
the logs' hosts mapped to sites.

Matomo counts every refused token as a failed login and blocks the client IP after 20 in an
hour (its default), after which even the right token is refused. So the first refusal ends
every API call of the run (matomo_rt.matomo.api): `check` must never be what gets a host
blocked.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from matomo_rt import detect, formats
from matomo_rt.config import Config, LogConfig
from matomo_rt.guard import check_line
from matomo_rt.matomo.api import Answer, MatomoApi, site_ids

if TYPE_CHECKING:
    from matomo_rt.check import Checklist

#: At most this many distinct hosts are looked up per log (the most frequent first).
MAX_HOSTS = 20


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_matomo(
    c: Checklist, config: Config, token: Optional[str], token_ok: bool, timeout: float
) -> None:
    url = config.matomo.url
    if url is None:
        c.skip("Matomo: matomo.url is not set")
        return
    api = MatomoApi(url, token if token_ok else None, timeout)
    unblock = (
        f"on the Matomo host, as its web server's user: php {config.matomo.path or '<matomo>'}"
        "/console login:unblock-blocked-ips (after fixing the token), or wait for the block "
        "to expire (60 minutes by default)"
    )
    answer = api.call("API.getMatomoVersion")
    if answer.kind == "unreachable":
        c.fail(
            f"Matomo at {url} is unreachable: {answer.message}",
            "check matomo.url, DNS, the firewall and TLS from this host",
        )
        return
    if answer.kind == "not_found":
        c.fail(
            f"no Matomo answers at {url}: {api.endpoint} is HTTP 404 ({answer.message})",
            "set matomo.url to Matomo's base URL, the address its login page is at (is the "
            "sub-path right?)",
        )
        return
    if answer.kind == "blocked":
        c.fail(
            f"Matomo at {url} blocks this host's IP after too many failed logins "
            f"({answer.message})",
            unblock,
        )
        return
    if answer.kind == "redirect":
        c.fail(
            f"Matomo at {url} redirects (HTTP {answer.status}) to {answer.message}",
            "set matomo.url to the URL Matomo is really served at (a redirected POST loses "
            "its token and parameters)",
        )
        return
    if answer.kind == "error" and (answer.status or 0) >= 500:
        c.fail(
            f"Matomo at {url} fails: {answer.message}",
            "look at Matomo's and the web server's error logs",
        )
        return
    if answer.kind == "not_json":
        c.fail(
            f"Matomo at {url} answered with something that is not JSON "
            f"(HTTP {answer.status}: {answer.message})",
            "check matomo.url: it must be Matomo's base URL (the one its UI is at)",
        )
        return
    if answer.kind == "ok":
        version = answer.data.get("value") if isinstance(answer.data, dict) else answer.data
        c.ok(f"Matomo {version} answers at {url}")
    elif api.token is None:
        # Anonymous: any Matomo-shaped error still proves Matomo is there.
        c.ok(f"Matomo answers at {url} ({answer.message})")
    elif answer.kind != "refused":
        c.ok(f"Matomo answers at {url}")

    if api.token is None:
        c.skip("token, write access and host mapping: no usable token")
        return
    if answer.kind == "refused":
        c.fail(
            f"Matomo refused the token ({answer.message})",
            "put a valid token_auth in matomo.token_auth_file (Matomo: Administration > "
            "Personal > Security > Auth tokens); each refused try counts as a failed login and "
            "20 in an hour block this host; no further API calls made",
        )
        c.skip("write access and host mapping: the token was refused")
        return
    if answer.kind == "no_access":
        c.fail(
            f"the token has no access to any site ({answer.message})",
            "use the token of a user with write or admin access to the sites",
        )
        c.skip("write access and host mapping: the token has no access")
        return
    if answer.kind == "error":
        c.warn(f"API.getMatomoVersion: {answer.message}")
    else:
        c.ok("Matomo accepted the token")
    if config.import_.workers > 1:
        _check_connections(c, api, config.import_.workers)

    writable = _check_write_access(c, api)
    if writable is None and api.stopped is not None:
        c.skip("host mapping: no further API calls")
        return
    for log_config in config.logs:
        _check_hosts(c, config, api, log_config, writable, unblock)


def _check_connections(c: Checklist, api: MatomoApi, workers: int) -> None:
    """import.workers runs that many importers at once: Matomo must answer that many."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = list(pool.map(lambda _: api.call("API.getMatomoVersion"), range(workers)))
    bad = [a for a in answers if a.kind != "ok"]
    if not bad:
        c.ok(f"Matomo answered {workers} requests at once (import.workers = {workers})")
        return
    first = bad[0]
    c.fail(
        f"of {workers} requests at once (import.workers = {workers}), {len(bad)} failed:"
        f" {first.message or first.kind}",
        "give Matomo more PHP workers (php-fpm pm.max_children) or lower import.workers",
    )


def _check_write_access(c: Checklist, api: MatomoApi) -> Optional[set[int]]:
    """Site ids the token may track to (admin or write access), or None if unknown."""
    admin = api.call("SitesManager.getSitesIdWithAdminAccess")
    if admin.kind != "ok":
        _api_problem(c, "SitesManager.getSitesIdWithAdminAccess", admin)
        return None
    ids = site_ids(admin.data)
    # Write access (Matomo 4+) is enough to track; older versions lack the method.
    write = api.call("SitesManager.getSitesIdWithWriteAccess")
    if write.kind == "ok":
        ids |= site_ids(write.data)
    elif write.kind not in ("error",):
        _api_problem(c, "SitesManager.getSitesIdWithWriteAccess", write)
        return None
    if not ids:
        c.fail(
            "the token has no write or admin access to any site: Matomo would refuse every "
            "imported request (while import_logs.py reports them imported)",
            "use the token of a user with write or admin access to the sites, or a super user",
        )
        return set()
    shown = ", ".join(str(i) for i in sorted(ids)[:20]) + (", …" if len(ids) > 20 else "")
    c.ok(f"the token may track to {_plural(len(ids), 'site')} ({shown})")
    return ids


def _api_problem(c: Checklist, method: str, answer: Answer) -> None:
    if answer.kind == "stopped":
        c.skip(f"{method}: no further API calls after: {answer.message}")
    elif answer.kind == "refused":
        c.fail(f"Matomo refused the token on {method} ({answer.message})", "fix the token")
    elif answer.kind == "blocked":
        c.fail(f"{method}: this host's IP is blocked ({answer.message})", "unblock it")
    elif answer.kind == "unreachable":
        c.fail(f"{method}: Matomo became unreachable ({answer.message})", "try again")
    else:
        c.fail(f"{method}: {answer.message}", "check Matomo's logs")


def _json_host(fmt: formats.LogFormat, line: bytes) -> object:
    if fmt.name == detect.NGINX_JSON:
        good, _ = check_line(line + b"\n")  # as the Guard hands it on (normalised)
        return None if good is None else json.loads(good).get("host")
    obj = json.loads(line)
    if fmt.name == detect.CADDY_JSON:
        request = obj.get("request") if isinstance(obj, dict) else None
        return request.get("host") if isinstance(request, dict) else None
    return obj.get("RequestHost") if isinstance(obj, dict) else None


def sample_hosts(path: Path, fmt: Optional[formats.LogFormat] = None) -> Counter[str]:
    """Hosts of the last lines of `path`, read as import_logs.py reads them in `fmt`.

    Formats whose host this does not know how to read (W3C, a custom regex, …) give none.
    """
    fmt = fmt or formats.resolve(formats.DEFAULT)
    hosts: Counter[str] = Counter()
    try:
        lines = detect.sample_lines(path)
    except OSError:
        return hosts
    for line in lines:
        try:
            if fmt.name in (detect.NGINX_JSON, detect.CADDY_JSON, detect.TRAEFIK_JSON):
                host = _json_host(fmt, line)
            elif fmt.name in (detect.VHOST_COMBINED, detect.VHOST_COMMON):
                if fmt.name not in detect.formats_of(line):
                    continue
                host = line.split(maxsplit=1)[0].decode("utf-8", "replace").partition(":")[0]
            else:
                return hosts
        except (ValueError, AttributeError, RecursionError):
            continue
        if isinstance(host, str) and host:
            hosts[host] += 1
    return hosts


def _flag_names(flags: tuple[str, ...]) -> set[str]:
    return {flag.split("=", 1)[0] for flag in flags}


def _check_hosts(
    c: Checklist,
    config: Config,
    api: MatomoApi,
    log_config: LogConfig,
    writable: Optional[set[int]],
    unblock: str,
) -> None:
    name = log_config.name
    flags = _flag_names((*config.import_.flags, *log_config.flags))
    if log_config.idsite is not None:
        site = log_config.idsite
        if writable is not None and site not in writable:
            c.fail(
                f"log {name}: idsite = {site}, but the token has no write access to site {site}",
                "give the token's user write access to that site, or fix logs.idsite",
            )
        else:
            c.skip(f"log {name}: host mapping (idsite = {site} is set)")
        return
    if "--idsite" in flags or "--log-hostname" in flags:
        c.skip(f"log {name}: host mapping (--idsite/--log-hostname in flags)")
        return
    hosts = sample_hosts(log_config.path, log_config.log_format)
    if not hosts:
        c.skip(f"log {name}: host mapping: no line with a host among its last lines")
        return
    unmapped: list[str] = []
    no_write: list[tuple[str, int]] = []
    for host, _ in hosts.most_common(MAX_HOSTS):
        answer = api.call("SitesManager.getSitesIdFromSiteUrl", url=host)
        if answer.kind != "ok":
            if answer.kind == "blocked":
                c.fail(f"log {name}: this host's IP is blocked ({answer.message})", unblock)
            else:
                _api_problem(c, f"log {name}: SitesManager.getSitesIdFromSiteUrl", answer)
            return
        ids = site_ids(answer.data)
        if not ids:
            unmapped.append(host)
        elif writable is not None and not ids & writable:
            no_write.append((host, min(ids)))
    checked = min(len(hosts), MAX_HOSTS)
    mapped = checked - len(unmapped)
    for host, site in no_write:
        c.fail(
            f"log {name}: host {host} is site {site}, but the token has no write access to it: "
            "Matomo would refuse its requests",
            "give the token's user write access to that site",
        )
    if not unmapped:
        c.ok(f"log {name}: all {checked} sampled hosts map to a Matomo site")
        return
    listed = ", ".join(unmapped)
    if "--idsite-fallback" in flags or "--add-sites-new-hosts" in flags:
        c.ok(
            f"log {name}: hosts without a site ({listed}) are handled by "
            f"{'--idsite-fallback' if '--idsite-fallback' in flags else '--add-sites-new-hosts'}"
        )
        return
    ways_out = (
        "add the site in Matomo (or the host as an Alias URL of a site), or add "
        '"--add-sites-new-hosts" or "--idsite-fallback=ID" to flags'
    )
    text = f"log {name}: {len(unmapped)} of {checked} sampled hosts match no Matomo site: {listed}"
    if mapped == 0:
        c.fail(text + " (nothing of this log would be stored)", ways_out)
    else:
        c.warn(f"{text}; their requests are skipped. Ways out: {ways_out}")
