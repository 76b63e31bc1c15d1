#!/usr/bin/env python3
"""bench/reader's report: hyperfine's JSON and /usr/bin/time's peak RSS as one markdown table.

Stdlib only. Reads OUT/full.json, OUT/nothing-new.json and STATE/<tool>.{full,nn}.time
("<max RSS kB> <elapsed s>") and prints markdown on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

# The targets for `matomo-rt tail`.
TARGET_FULL_RATIO = 1.5
TARGET_NOTHING_NEW_S = 0.050
TARGET_RSS_MB = 30
MATOMO_ROWS = ("matomo-rt", "matomo-rt-dev")


def load(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {r["command"]: r for r in json.loads(path.read_text())["results"]}


def rss_mb(state: Path, name: str, kind: str) -> float | None:
    """Peak RSS in MB (10^6 bytes); GNU time's %M is in KiB."""
    try:
        kib = int((state / f"{name}.{kind}.time").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return kib * 1024 / 1e6


def fmt_s(r: dict) -> str:
    return f"{r['mean']:.3f} ± {r['stddev'] or 0:.3f}"


def fmt_ms(r: dict) -> str:
    return f"{r['mean'] * 1e3:.1f} ± {(r['stddev'] or 0) * 1e3:.1f}"


def fmt_mb(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def machine(python: str) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pyver = subprocess.run(
            [python, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pyver = "unknown"
    try:
        hf = subprocess.run(["hyperfine", "--version"], capture_output=True, text=True).stdout
    except OSError:
        hf = "hyperfine ?"
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return [
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {os.cpu_count()} x {cpu} (`nproc` = {len(os.sched_getaffinity(0))}),"
        f" {mem_kb / 1024 / 1024:.0f} GiB RAM; Linux {platform.release()}",
        f"- Python (matomo-rt's interpreter): {pyver}; {hf.strip()}",
    ]


def importtime(path: Path, top: int = 12) -> list[str]:
    """The slowest imports of `import matomo_rt.cli`, each module's fastest of the runs."""
    best: dict[str, tuple[int, int, int]] = {}  # name -> (self us, cumulative us, depth)
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        own, cum = int(parts[0]), int(parts[1])
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        name = name.strip()
        if name not in best or own < best[name][0]:
            best[name] = (own, cum, depth)
    if "matomo_rt.cli" not in best:
        return []
    rows = sorted(best.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
    out = [
        "",
        f"Biggest imports of `python -X importtime -c 'import matomo_rt.cli'` (whole import"
        f" {best['matomo_rt.cli'][1] / 1e3:.1f} ms under importtime, which adds its own"
        " overhead; each module's fastest of 5 runs):",
        "",
        "| module | self (ms) | with its imports (ms) |",
        "| --- | ---: | ---: |",
    ]
    for name, (own, cum, _) in rows:
        out.append(f"| {name} | {own / 1e3:.1f} | {cum / 1e3:.1f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--log-bytes", type=int, required=True)
    ap.add_argument("--log-lines", type=int, required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--nn-runs", type=int, required=True)
    ap.add_argument("--python", default="python3")
    ap.add_argument("--command", default="bench/reader")
    ap.add_argument("--revision", default="unknown")
    ap.add_argument("--load-before", default="?")
    args = ap.parse_args()

    full = load(args.out / "full.json")
    nn = load(args.out / "nothing-new.json")
    cat = full.get("cat")
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    out = [
        f"Command: `{args.command}`",
        "",
        *machine(args.python),
        f"- matomo-rt: {args.revision}",
        f"- log: {args.log_bytes:,} bytes, {args.log_lines:,} lines"
        f" ({args.log_bytes / max(args.log_lines, 1):.0f} bytes a line), nginx_json;"
        " page cache warm (read once before timing), output to /dev/null",
        f"- hyperfine -N: full read {args.runs} runs after {args.warmup} warm-up, offset file"
        f" deleted before each; nothing new {args.nn_runs} runs after 3 warm-up, offset file"
        " reset to the end before each",
        f"- load average (1, 5, 15 min) before: {args.load_before}; after: {load_after}",
        "",
        "| tool | full read (s), mean ± sd | min | x cat (mean) | x cat (min) |"
        " nothing new (ms), mean ± sd | min |"
        " peak RSS full read (MB) | peak RSS nothing new (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = list(full) + [n for n in nn if n not in full]
    for name in names:
        f, n = full.get(name), nn.get(name)
        cells = [name if name in full else f"*{name}*"]
        if f:
            cells += [fmt_s(f), f"{f['min']:.3f}"]
            if cat:
                cells += [f"{f['mean'] / cat['mean']:.2f}", f"{f['min'] / cat['min']:.2f}"]
            else:
                cells += ["—", "—"]
        else:
            cells += ["—"] * 4
        cells += [
            fmt_ms(n) if n else "—",
            f"{n['min'] * 1e3:.1f}" if n else "—",
            fmt_mb(rss_mb(args.state, name, "full")),
            fmt_mb(rss_mb(args.state, name, "nn")),
        ]
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "Ratios and targets use the means; on a busy machine the minimum is the better estimate"
        ' of the CPU cost. cat\'s "nothing new" is `tail -c +N FILE` (coreutils seeking past the'
        " end): the start-up floor of a C reader. Rows in *italics* are start-up references, not"
        " readers: the interpreter matomo-rt runs on, bare and importing its CLI.",
    ]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        out += [
            "",
            "PYTHONDONTWRITEBYTECODE is set: modules without a compiled .pyc (an editable"
            " install's source tree, say) are compiled again at every start.",
        ]

    out += importtime(args.out / "importtime.txt")

    checks = []
    for name in MATOMO_ROWS:
        f, n = full.get(name), nn.get(name)
        if not f:
            continue
        rss = [v for v in (rss_mb(args.state, name, k) for k in ("full", "nn")) if v]
        if cat:
            r = f["mean"] / cat["mean"]
            checks.append(
                f"- {name}: full read {r:.2f}x cat (target ≤ {TARGET_FULL_RATIO}x):"
                f" {'met' if r <= TARGET_FULL_RATIO else 'MISSED'}"
            )
        if n:
            checks.append(
                f"- {name}: nothing new {n['mean'] * 1e3:.1f} ms (target ≤"
                f" {TARGET_NOTHING_NEW_S * 1e3:.0f} ms):"
                f" {'met' if n['mean'] <= TARGET_NOTHING_NEW_S else 'MISSED'}"
            )
        if rss:
            checks.append(
                f"- {name}: peak RSS {max(rss):.1f} MB (target ≤ {TARGET_RSS_MB} MB):"
                f" {'met' if max(rss) <= TARGET_RSS_MB else 'MISSED'}"
            )
    if checks:
        out += ["", "Targets:", "", *checks]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
