"""Memory over time of every process of the demo: ``make soak-memory [MINUTES=60] [RATE=20]``.

Runs ``python -m devstack.launcher demo`` (embedded broker and MongoDB-protocol server,
``--workers`` workers, the watcher, the simulator at ``--rate`` images/s, the dashboard)
in a fresh ``IMGFLOW_HOME`` for ``--minutes``, and every ``--interval`` seconds records the
resident memory (RSS) of each process, by role, with the number of images stored so far
(the exact counters in MongoDB). Then per role: growth per hour and per 10,000 images (a
least-squares line over the samples after ``--warmup`` minutes: start-up allocations are
not growth), and what 7 days at the demo's default rate would add at that slope.

Writes ``benchmarks/results/memory.json`` (``--out``) and a plot of memory over time per
process beside it (``.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
DEMO_RATE = 5.0  # the launcher's default simulator rate, images/s
WEEK_H = 7 * 24

#: A process's role, from its command line (first match wins).
ROLES = [
    ("broker", re.compile(r"tansu")),
    ("mongodb", re.compile(r"secantusd")),
    ("dashboard", re.compile(r"panel|bokeh|dashboard")),
    ("simulator", re.compile(r"\bsimulate\b")),
    ("watcher", re.compile(r"\bwatch\b")),
    ("worker", re.compile(r"\bworker\b")),
]


def role_of(proc: psutil.Process) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return next((name for name, pattern in ROLES if pattern.search(cmd)), "other")


def rss_by_role(root: psutil.Process, cpu: dict[int, tuple[str, float]] | None = None) -> dict[str, float]:
    """MB resident per role over the launcher's process tree (several workers: summed).

    ``cpu``, if given, is updated with each process's CPU seconds so far by pid (a process
    that ended keeps its last reading: a rolled broker's CPU still counts)."""
    found: dict[str, float] = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for proc in procs:
        role = "launcher" if proc.pid == root.pid else role_of(proc)
        if role is None:
            continue
        try:
            found[role] = found.get(role, 0.0) + proc.memory_info().rss / 1e6
            if cpu is not None:
                times = proc.cpu_times()
                cpu[proc.pid] = (role, times.user + times.system)
        except psutil.NoSuchProcess:
            continue
    return found


def cpu_by_role(cpu: dict[int, tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, seconds in cpu.values():
        out[role] = round(out.get(role, 0.0) + seconds, 2)
    return out


def log_count(path: Path, needle: str) -> int:
    try:
        return path.read_text(errors="replace").count(needle)
    except OSError:
        return 0


def stored(mongo_url: str | None, db_name: str) -> int | None:
    if not mongo_url:
        return None
    from imgflow.mongo import connect
    from imgflow.tally import IMAGES, totals

    client = connect(mongo_url, serverSelectionTimeoutMS=2000)
    try:
        return int(totals(client[db_name])[IMAGES])
    except Exception:
        return None
    finally:
        client.close()


def submitted(broker_url: str | None, topic: str = "imgflow-paths", partitions: int = 4) -> int | None:
    """Paths published so far (the end of the paths topic): what the broker holds records for,
    stored or not. A chain that falls behind shows as submitted well above stored."""
    if not broker_url:
        return None
    import asyncio

    from devstack.kafka import end_offsets

    try:
        return sum(asyncio.run(end_offsets(broker_url.split("://", 1)[-1], [topic], partitions)))
    except Exception:
        return None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than 3 points or no spread)."""
    if len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def growth(
    samples: list[dict[str, Any]], warmup_s: float, rate: float, settled_s: float | None = None
) -> dict[str, dict[str, Any]]:
    """Per role: growth lines after ``warmup_s``, and after ``settled_s`` (when the bounded
    structures are full: the counted table keeps a key per image until its window expires)."""
    steady = [s for s in samples if s["t"] >= warmup_s]
    roles = sorted({r for s in samples for r in s["rss_mb"]})
    out: dict[str, dict[str, Any]] = {}
    for role in roles:
        rows = [s for s in steady if role in s["rss_mb"]]
        per_s = slope([s["t"] for s in rows], [s["rss_mb"][role] for s in rows])
        with_images = [s for s in rows if s.get("images") is not None]
        per_image = slope([float(s["images"]) for s in with_images], [s["rss_mb"][role] for s in with_images])
        with_sent = [s for s in rows if s.get("submitted") is not None]
        per_sent = slope([float(s["submitted"]) for s in with_sent], [s["rss_mb"][role] for s in with_sent])
        first = next((s["rss_mb"][role] for s in samples if role in s["rss_mb"]), None)
        last = rows[-1]["rss_mb"][role] if rows else None
        per_hour = per_s * 3600 if per_s is not None else None
        full = [s for s in rows if settled_s is not None and s["t"] >= settled_s]
        settled = slope([s["t"] for s in full], [s["rss_mb"][role] for s in full])
        full_images = [s for s in full if s.get("images") is not None]
        settled_per_image = slope(
            [float(s["images"]) for s in full_images], [s["rss_mb"][role] for s in full_images]
        )
        # The week's extrapolation from the settled line when the run has one: a bounded
        # structure that was filling is not growth for the rest of the week.
        week_slope = settled_per_image if settled_per_image is not None else per_image
        cpu_rows = [s for s in with_images if role in s.get("cpu_s", {})]
        cpu_ms = None
        if len(cpu_rows) >= 2 and cpu_rows[-1]["images"] > cpu_rows[0]["images"]:
            spent = cpu_rows[-1]["cpu_s"][role] - cpu_rows[0]["cpu_s"][role]
            cpu_ms = 1000 * spent / (cpu_rows[-1]["images"] - cpu_rows[0]["images"])
        out[role] = {
            "start_mb": first,
            "end_mb": last,
            "max_mb": max((s["rss_mb"][role] for s in rows), default=None),
            # CPU per image stored after the warm-up (every process of the role, rolled ones too).
            "cpu_ms_per_image": cpu_ms,
            "mb_per_hour": per_hour,
            # The same line over the samples after the tables are full (None if the run ends first).
            "mb_per_hour_settled": settled * 3600 if settled is not None else None,
            "mb_per_10k_images": per_image * 10_000 if per_image is not None else None,
            # Per image submitted: the same when the chain keeps up; the honest figure when not.
            "mb_per_10k_submitted": per_sent * 10_000 if per_sent is not None else None,
            # At the demo's default rate the same images take rate/DEMO_RATE times longer.
            "week_at_demo_rate_mb": (
                (last or 0) + week_slope * DEMO_RATE * 3600 * WEEK_H if week_slope is not None else None
            ),
        }
    return out


def plot(samples: list[dict[str, Any]], path: Path, title: str, settled_s: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = sorted({r for s in samples for r in s["rss_mb"]})
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for role in roles:
        xs = [s["t"] / 60 for s in samples if role in s["rss_mb"]]
        ys = [s["rss_mb"][role] for s in samples if role in s["rss_mb"]]
        ax.plot(xs, ys, label=role)
    if settled_s is not None and samples and samples[-1]["t"] > settled_s:
        ax.axvline(settled_s / 60, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            "first windows expire",
            (settled_s / 60, 0),
            xytext=(4, 4),
            textcoords="offset points",
            fontsize="small",
            color="grey",
        )
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=20.0, help="simulator images/s")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes left out of the growth lines")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args()
    from imgflow.settings import Settings

    windows = Settings()
    # The counted table holds a key per image until its window expires: full from then on.
    settled_s = args.warmup * 60 + windows.window_seconds + windows.window_expires

    home = Path(tempfile.mkdtemp(prefix="imgflow-memory-"))
    env = {**os.environ, "IMGFLOW_HOME": str(home)}
    built = ROOT / "var" / "models" / "efficientnet-lite0" / "model.toml"
    if "IMGFLOW_MODEL" not in env and built.exists():
        env["IMGFLOW_MODEL"] = str(built)  # the model `make model` built, not a rebuild per run
    for name in ("BROKER_URL", "MONGO_URL"):  # the embedded services: the point of the run
        env.pop(name, None)
    argv = [sys.executable, "-m", "devstack.launcher", "demo", "--quiet"]
    argv += ["--workers", str(args.workers), "--rate", str(args.rate)]
    log = (home / "launcher.log").open("w")
    launcher = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(launcher.pid)
    samples: list[dict[str, Any]] = []
    mongo_url = broker_url = None
    db_name = env.get("MONGO_DB", "imgflow")
    cpu: dict[int, tuple[str, float]] = {}
    sent_before, last_ends = 0, 0
    started = time.monotonic()
    print(
        f"demo in {home}: {args.workers} worker(s), {args.rate:g} images/s, {args.minutes:g} min", flush=True
    )
    try:
        while time.monotonic() - started < args.minutes * 60:
            if launcher.poll() is not None:
                raise SystemExit(
                    f"the demo stopped (exit {launcher.returncode}); see {home / 'launcher.log'}"
                )
            if mongo_url is None:
                found = re.search(
                    r"mongodb\s+(mongodb://\S+)\s+database (\S+)", (home / "launcher.log").read_text()
                )
                if found:
                    mongo_url, db_name = found.group(1), found.group(2)
                    broker = re.search(r"broker\s+(kafka://\S+)", (home / "launcher.log").read_text())
                    broker_url = broker.group(1) if broker else None
            t = time.monotonic() - started
            ends = submitted(broker_url)
            if ends is not None:
                # A roll-over starts an empty broker: count on from what the old one had
                # (it drained first; paths published after the last reading are missed).
                if ends < last_ends:
                    sent_before += last_ends
                last_ends = ends
            sample: dict[str, Any] = {
                "t": round(t, 1),
                "images": stored(mongo_url, db_name),
                "submitted": sent_before + ends if ends is not None else None,
                "rss_mb": rss_by_role(root, cpu),
                "cpu_s": cpu_by_role(cpu),
                "rolls": log_count(home / "launcher.log", "was rolled over"),
                "stall_warnings": sum(
                    log_count(p, "stalled partitions") for p in (home / "logs").glob("worker*.log")
                ),
            }
            samples.append(sample)
            if len(samples) % 6 == 1:
                rss = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(sample["rss_mb"].items()))
                done, sent = sample["images"] or 0, sample["submitted"] or 0
                print(
                    f"  {t / 60:5.1f} min  {done:>7,} stored of {sent:>7,}  rolls {sample['rolls']}"
                    f"  stalls {sample['stall_warnings']}  MB: {rss}",
                    flush=True,
                )
            time.sleep(max(0.0, args.interval - (time.monotonic() - started - t)))
    finally:
        # SIGTERM: the launcher stops everything it started (SIGINT is ignored by a process
        # started in the background by a non-interactive shell, as under nohup).
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        log.close()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "params": {
            "minutes": args.minutes,
            "rate": args.rate,
            "workers": args.workers,
            "warmup_min": args.warmup,
            "settled_min": settled_s / 60,
        },
        "growth": growth(samples, args.warmup * 60, args.rate, settled_s),
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    title = f"imgflow demo, {args.workers} worker(s), {args.rate:g} images/s ({results['commit']})"
    plot(samples, args.out.with_suffix(".png"), title, settled_s)
    head = f"{'MB/hour':>9} {'settled':>9} {'MB/10k stored':>13} {'MB/10k sent':>11} {'7 d at 5/s':>11}"
    print(f"\n{'process':<10} {'start':>8} {'end':>8} {'max':>8} {'CPU ms/img':>9} {head}")
    for role, g in results["growth"].items():
        cells = [
            g["start_mb"],
            g["end_mb"],
            g["max_mb"],
            g["cpu_ms_per_image"],
            g["mb_per_hour"],
            g["mb_per_hour_settled"],
            g["mb_per_10k_images"],
            g["mb_per_10k_submitted"],
            g["week_at_demo_rate_mb"],
        ]
        print(f"{role:<10} " + " ".join(f"{c:>9,.0f}" if c is not None else f"{'-':>9}" for c in cells))
    last = samples[-1] if samples else {}
    print(
        f"\n{last.get('images')} stored of {last.get('submitted')} submitted; "
        f"{last.get('rolls')} broker roll-overs; {last.get('stall_warnings')} stalled-partition warnings"
    )
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')} (logs in {home})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
