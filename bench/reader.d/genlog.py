#!/usr/bin/env python3
"""Write a deterministic nginx access log in matomo-rt's nginx_json format (stdlib only).

Lines are what nginx writes with contrib/nginx/matomo-rt-log-format.conf (log_format
matomo_json escape=json): keys ip, host, path, status, referrer, user_agent, length,
generation_time_milli, date, method, every value a JSON string. User agents, paths, referrers,
statuses and sizes are drawn (seeded) from weighted pools of realistic values; the average line
is about 340 bytes.

Fast: a block of BLOCK_LINES varied lines is rendered once, with the date left out, grouped by
second; the file is that block written over and over with the date moving on, each second's
lines joined around its date string in one C-level bytes.join. So 1 GB takes a few seconds and
no two repetitions carry the same dates.

Usage: genlog.py OUTPUT SIZE_BYTES [--seed N]   (writes whole lines, stops at >= SIZE_BYTES)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sys

BLOCK_LINES = 1 << 16
LINES_PER_SECOND = 24  # average; the number in each second varies
START = dt.datetime(2025, 3, 3, 6, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))

# (weight, user agent): browsers as of 2024-2025, mobile, bots, tools, a few odd ones.
USER_AGENTS = [
    (
        14,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    ),
    (
        8,
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.0.0 Safari/537.36 Edg/130.0.0.0",
    ),
    (6, "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"),
    (
        7,
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/18.1 Safari/605.1.15",
    ),
    (
        6,
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/131.0.0.0 Safari/537.36",
    ),
    (
        3,
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    ),
    (2, "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"),
    (
        12,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Version/18.1.1 Mobile/15E148 Safari/604.1",
    ),
    (
        4,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    ),
    (
        2,
        "Mozilla/5.0 (iPad; CPU OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
        " Version/18.1 Mobile/15E148 Safari/604.1",
    ),
    (
        10,
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36",
    ),
    (
        3,
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    ),
    (
        1,
        "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/130.0.6723.107 Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/488.0.0.49.109;]",
    ),
    (
        1,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Mobile/22B83 Instagram 357.0.0.25.101 (iPhone15,3; iOS 18_1; de_DE; de; "
        "scale=3.00; 1290x2796; 662447425)",
    ),
    (
        3,
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, "
        "like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
        "+http://www.google.com/bot.html)",
    ),
    (2, "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"),
    (1, "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)"),
    (1, "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)"),
    (1, "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)"),
    (1, "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)"),
    (
        1,
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
        "+https://openai.com/gptbot)",
    ),
    (1, "curl/7.88.1"),
    (1, "python-requests/2.31.0"),
    (1, "Go-http-client/1.1"),
    (1, "Wget/1.21.3"),
    (1, ""),
    (1, "Mozilla/5.0 zgrab/0.x"),
    (
        1,
        "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
        'Chrome/49.0.2623.112 Safari/537.36 \\"quoted\\"',
    ),
]

SLUGS = [
    "blog/faster-builds",
    "release-notes-4-2",
    "a-guide-to-self-hosting",
    "privacy-friendly-analytics",
    "winter-sale",
    "caf%C3%A9-au-lait-recipe",
    "about-us",
    "getting-started",
    "faq",
    "pricing",
    "contact",
    "jobs/backend-engineer",
    "docs/install",
    "docs/config",
    "blog/2024-review",
    "stra%C3%9Fe-und-weg",
    "products/espresso-pro",
    "products/grinder",
    "news/press-kit",
    "team",
]
HOSTS = [(6, "example.org"), (3, "www.example.org"), (2, "shop.example.org")]
STATIC = [
    "/static/css/app.3f9a1c2e.css",
    "/static/js/main.8b1d77f0.js",
    "/static/js/vendor.c41e9a02.js",
    "/favicon.ico",
    "/apple-touch-icon.png",
    "/static/img/hero-1920.webp",
    "/static/fonts/inter-var.woff2",
    "/robots.txt",
    "/sitemap.xml",
]
SCANS = [
    "/wp-login.php",
    "/.env",
    "/xmlrpc.php",
    "/wp-admin/setup-config.php?step=1",
    "/.git/config",
    "/phpmyadmin/index.php",
    "/cgi-bin/luci/;stok=/locale",
]
SEARCH_TERMS = [
    "espresso",
    "caf%C3%A9",
    "grinder+manual",
    "price",
    "opening+hours",
    "r%C3%BCckgabe",
    "shipping+to+austria",
]
REFERRERS = [
    (55, ""),
    (18, "https://www.google.com/"),
    (2, "https://www.bing.com/"),
    (1, "https://duckduckgo.com/"),
    (1, "https://t.co/x1Yb9ZqkP3"),
    (1, "android-app://com.google.android.gm/"),
    (1, "https://www.facebook.com/"),
    (1, "https://news.ycombinator.com/item?id=42291830"),
]


def weighted(rng: random.Random, pool):
    weights = [w for w, _ in pool]
    values = [v for _, v in pool]
    return lambda: rng.choices(values, weights)[0]


def ipv4(rng: random.Random) -> str:
    first = rng.choice(
        [
            2,
            5,
            31,
            37,
            46,
            62,
            77,
            78,
            79,
            80,
            81,
            82,
            84,
            85,
            86,
            87,
            88,
            89,
            91,
            93,
            94,
            95,
            109,
            141,
            176,
            178,
            185,
            188,
            193,
            212,
            213,
            217,
        ]
    )
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def ipv6(rng: random.Random) -> str:
    return "2a02:{:x}:{:x}:{:x}::{:x}".format(*(rng.randrange(1, 65536) for _ in range(4)))


def make_block(seed: int) -> list[tuple[bytes, bytes]]:
    """BLOCK_LINES lines, each as (the part before the date value, the part after it)."""
    rng = random.Random(seed)
    ua = weighted(rng, USER_AGENTS)
    host = weighted(rng, HOSTS)
    referrer_ext = weighted(rng, REFERRERS)
    # Visitors: an IP and a user agent that stay together, some many hits, most few.
    visitors = [(ipv6(rng) if rng.random() < 0.15 else ipv4(rng), ua()) for _ in range(4000)]
    out = []
    for _ in range(BLOCK_LINES):
        ip, agent = visitors[
            min(int(rng.paretovariate(0.9)) - 1, len(visitors) - 1)
            if rng.random() < 0.5
            else rng.randrange(len(visitors))
        ]
        h = host()
        r = rng.random()
        method = "GET"
        if r < 0.40:
            path = rng.choice(STATIC)
            status = "304" if rng.random() < 0.3 else "200"
            length = 0 if status == "304" else rng.randrange(400, 250_000)
            # Same-origin pages send their URL; a "Referrer-Policy: origin" site just its origin.
            referrer = f"https://{h}/" + (rng.choice(SLUGS) if rng.random() < 0.5 else "")
        elif r < 0.85:
            path = "/" + rng.choice(SLUGS)
            if rng.random() < 0.06:
                month = rng.randrange(1, 13)
                path += f"?utm_source=newsletter&utm_medium=email&utm_campaign=2025-{month:02d}"
            status = rng.choices(["200", "301", "404", "500"], [90, 4, 5, 1])[0]
            length = rng.randrange(9_000, 90_000) if status == "200" else rng.randrange(150, 600)
            referrer = referrer_ext() or (f"https://{h}/" if rng.random() < 0.4 else "")
        elif r < 0.93:
            path = f"/search?q={rng.choice(SEARCH_TERMS)}&page={rng.randrange(1, 5)}"
            status, length = "200", rng.randrange(5_000, 40_000)
            referrer = f"https://{h}/"
        elif r < 0.97:
            path = f"/api/v1/cart/{rng.randrange(10**6):06d}/items"
            method = rng.choice(["POST", "GET", "DELETE"])
            status = rng.choices(["200", "201", "204", "422"], [5, 3, 2, 1])[0]
            length = 0 if status == "204" else rng.randrange(30, 2_000)
            referrer = f"https://{h}/products/espresso-pro"
        else:
            path = rng.choice(SCANS)
            method = rng.choice(["GET", "GET", "POST", "HEAD"])
            status, length, referrer = "404", 153, ""
            h = rng.choice(["example.org", "203.0.113.10", "_"])
        if not agent.startswith("Mozilla/5.0 (") or "bot" in agent.lower():
            referrer = ""  # crawlers and tools send none
        gen_ms = int(rng.lognormvariate(2.5, 1.2)) if not path.startswith("/static") else 0
        # Values are written as nginx's escape=json writes them: already JSON-safe here.
        pre = (
            f'{{"ip":"{ip}","host":"{h}","path":"{path}","status":"{status}",'
            f'"referrer":"{referrer}","user_agent":"{agent}","length":"{length}",'
            f'"generation_time_milli":"{gen_ms // 1000}.{gen_ms % 1000:03d}","date":"'
        )
        post = f'","method":"{method}"}}\n'
        out.append((pre.encode(), post.encode()))
    return out


def groups_of(block, seed: int) -> list[list[bytes]]:
    """The block cut into runs of lines that share one second, each ready for date.join()."""
    rng = random.Random(seed + 1)
    groups, i = [], 0
    while i < len(block):
        n = max(1, int(rng.expovariate(1 / LINES_PER_SECOND)))
        lines = block[i : i + n]
        i += n
        parts = [lines[0][0]]
        for (_, post), (pre, _) in zip(lines, lines[1:]):
            parts.append(post + pre)
        parts.append(lines[-1][1])
        groups.append(parts)
    return groups


def generate(path: str, size: int, seed: int) -> tuple[int, int]:
    block = make_block(seed)
    groups = groups_of(block, seed)
    second = 0
    written = lines = 0
    tmp = path + ".tmp"
    with open(tmp, "wb", buffering=0) as fh:
        buf: list[bytes] = []
        pending = 0
        while written + pending < size:
            for parts in groups:
                second += 1
                date = (START + dt.timedelta(seconds=second)).isoformat().encode()
                data = date.join(parts)
                buf.append(data)
                pending += len(data)
                lines += len(parts) - 1
                if written + pending >= size:
                    break
                if pending >= 8 << 20:
                    fh.write(b"".join(buf))
                    written += pending
                    buf, pending = [], 0
            second += 3600  # a gap between repetitions of the block
        fh.write(b"".join(buf))
        written += pending
    os.replace(tmp, path)
    return written, lines


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    return int(float(t[: len(t) - len(unit)]) * units[unit])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output")
    ap.add_argument("size", help="bytes, or with K/M/G (binary) suffix: 1G, 200M")
    ap.add_argument("--seed", type=int, default=20250303)
    ap.add_argument("--check", action="store_true", help="parse every line of the first block")
    args = ap.parse_args()
    size = parse_size(args.size)
    written, lines = generate(args.output, size, args.seed)
    if args.check:
        with open(args.output, "rb") as fh:
            for _, line in zip(range(BLOCK_LINES * 2), fh):
                d = json.loads(line)
                assert set(d) == {
                    "ip",
                    "host",
                    "path",
                    "status",
                    "referrer",
                    "user_agent",
                    "length",
                    "generation_time_milli",
                    "date",
                    "method",
                }, d
    print(
        f"{args.output}: {written} bytes, {lines} lines, {written / max(lines, 1):.0f} "
        "bytes a line",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
