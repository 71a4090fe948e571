"""``make demo``'s launcher: the whole embedded stack comes up, results land, Ctrl-C stops it all."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.e2e


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


ROOT = Path(__file__).resolve().parent.parent


class Demo:
    """``python -m devstack.launcher demo`` (one worker, no dashboard) and its output, line by line;
    ``make=True``: the same through ``make demo``, as a user or a service manager starts it (make
    is told the venv and the model are up to date: it only runs the recipe)."""

    def __init__(
        self, tmp_path: Path, model_spec: Path, rate: float = 10, make: bool = False, **env: str
    ) -> None:
        self.home = tmp_path / "var"
        args = ["--workers", "1", "--no-dashboard", "--rate", str(rate)]
        argv = [sys.executable, "-m", "devstack.launcher", "demo", *args]
        if make:
            stamp, model = ".venv/.installed", "var/models/efficientnet-lite0/efficientnet-lite0.tflite"
            argv = [
                "make",
                "--no-print-directory",
                "-o",
                stamp,
                "-o",
                model,
                "demo",
                f"DEMO_ARGS={' '.join(args)}",
            ]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={
                **{k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "MONGO_URL")},
                "IMGFLOW_HOME": str(self.home),
                "IMGFLOW_MODEL": str(model_spec),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.started = time.monotonic()
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def find(self, wanted: str, after: int = 0) -> int | None:
        """The index of the first output line from ``after`` on that holds ``wanted``."""
        return next((i for i in range(after, len(self.lines)) if wanted in self.lines[i]), None)

    def wait_for(self, wanted: str, timeout: float, after: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (found := self.find(wanted, after)) is not None:
                return found
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no {wanted!r} in the demo's output:\n" + "".join(self.lines[-40:]))

    def interrupt(self, twice: bool = False) -> bool:
        """Ctrl-C, and wait for every child to stop; ``twice``: a second one while it stops."""
        self.proc.send_signal(signal.SIGINT)
        second = False
        if twice:
            try:
                self.wait_for("stopping...", 60)
            except AssertionError:
                pass
            else:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGINT)
                    second = True
        self.proc.wait(180)
        self.reader.join(10)
        return second

    def kill_leftovers(self) -> None:
        """Whatever this demo started and left running (a launcher that failed to stop them):
        killed, so a failing test does not leave servers behind. Tests assert before this."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pid in [p for pids in self.pids().values() for p in pids]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def pids(self) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for name, pid in re.findall(r"started (\S+) \(pid (\d+)\)", self.out):
            found.setdefault(name, []).append(int(pid))
        return found


def in_home(home: Path) -> list[int]:
    """Every live process started with ``IMGFLOW_HOME=home``: the launcher and all it started."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        with suppress(psutil.Error):
            if proc.environ().get("IMGFLOW_HOME") == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


@pytest.fixture
def demos() -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in started:
        demo.kill_leftovers()


def test_demo_brings_up_everything_and_ctrl_c_stops_it(
    tmp_path: Path, default_model_spec: Path, demos: list[Demo]
):
    demo = Demo(tmp_path, default_model_spec)
    demos.append(demo)
    second = False
    try:
        demo.wait_for("stored ", 240)
        print(f"demo: first stored result {time.monotonic() - demo.started:.1f}s after the launcher started")
    finally:
        # An impatient second Ctrl-C while it stops must not cut the stop short.
        second = demo.interrupt(twice=True)
    started = demo.pids()
    assert {"tansu", "secantusdb", "worker1", "watcher", "simulator"} <= set(started), started
    assert demo.proc.returncode == 0, "".join(demo.lines[-40:])
    assert not [p for pids in started.values() for p in pids if alive(p)], (
        "children left running after Ctrl-C"
    )
    out = demo.out
    assert "imgflow demo is running" in out and "stopping..." in out
    assert not second or "already stopping" in out, out
    assert "!!" not in out, out  # no child (worker, watcher, simulator...) died on its own
    assert (tmp_path / "var" / "dataset").is_dir()


def test_sigterm_to_make_demo_stops_everything(tmp_path: Path, default_model_spec: Path, demos: list[Demo]):
    """A service manager or a CI timeout stops ``make demo`` with a SIGTERM to make alone (not to
    its process group, as Ctrl-C does): make passes it to the launcher, which stops every child
    before make exits."""
    demo = Demo(tmp_path, default_model_spec, make=True)
    demos.append(demo)
    demo.wait_for("imgflow demo is running", 240)
    demo.wait_for("stored ", 120)
    demo.proc.send_signal(signal.SIGTERM)  # make's pid: the launcher is its child
    demo.proc.wait(180)
    demo.reader.join(10)
    started = demo.pids()
    assert {"tansu", "secantusdb", "worker1", "watcher", "simulator"} <= set(started), demo.out[-3000:]
    left = [(name, pid) for name, pids in started.items() for pid in pids if alive(pid)]
    assert not left, f"left running after SIGTERM to make: {left}"
    assert not in_home(demo.home), "a process of this demo (the launcher itself?) is still running"
    assert "stopping..." in demo.out and "stopped tansu" in demo.out, demo.out[-3000:]
    assert demo.proc.returncode != 0  # make re-raises the signal it was stopped by


def counted_windows(worker_url: str) -> list[dict[str, Any]]:
    """The windows of live counts a worker serves for the whole cluster."""
    with urllib.request.urlopen(f"{worker_url}/counts/?windows=1000", timeout=10) as resp:
        body = json.load(resp)
    assert body["complete"], body
    return list(body["windows"])


def test_a_full_embedded_broker_is_rolled_over_without_losing_an_image_or_a_count(
    tmp_path: Path, default_model_spec: Path, demos: list[Demo]
):
    """Past its record limit the broker is swapped for a fresh one: images in flight all land,
    and the live counts go on from where they were (the tables are carried over)."""
    from PIL import Image
    from pymongo import MongoClient

    from imgflow.settings import Settings
    from lifecycle.promote import next_promotion, publish, read_current

    rng = np.random.default_rng(7)
    # A limit one partition of the chain passes within a minute at 25 images/s (~6 records a
    # second each); the memory limit out of reach (the watch's memory side: test_dashboard.py).
    demo = Demo(
        tmp_path,
        default_model_spec,
        rate=25,
        IMGFLOW_BROKER_ROLL_RECORDS="200",
        IMGFLOW_WINDOW_SECONDS="10",
        IMGFLOW_BROKER_MEMORY_WARN_MB="100000",
    )
    demos.append(demo)
    inbox = demo.home / "inbox"
    dropped: list[str] = []
    try:
        # A promoted default model (here the configured one, named explicitly) outlives the roll.
        demo.wait_for("broker ", 120)
        broker = re.search(r"broker\s+(kafka://\S+)", demo.out)
        assert broker, demo.out
        on_broker = Settings(BROKER_URL=broker.group(1), IMGFLOW_TOPIC_PREFIX="imgflow")  # type: ignore[call-arg]
        promoted = next_promotion(None, default_model_spec.resolve(), "efficientnet-lite0:1.0.0", "test")
        asyncio.run(publish(on_broker, promoted))
        assert "Rolling over" not in demo.out  # the record went to the broker that will be rolled
        demo.wait_for("stored ", 240)
        worker = re.search(r"worker 1\s+(http://\S+)/health/", demo.out)
        assert worker, demo.out
        rolling = demo.wait_for("Rolling over to a fresh broker now", 120)
        rolling_at = time.time()
        assert "records in one partition (limit 200)" in demo.lines[rolling], demo.lines[rolling]
        # Files keep coming while the chain drains, the broker is swapped and all restarts.
        deadline = time.monotonic() + 180
        rolled = None
        while rolled is None and time.monotonic() < deadline:
            name = f"drop-{len(dropped):03d}.jpg"
            pixels = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(inbox / f".{name}", format="JPEG")
            (inbox / f".{name}").rename(inbox / name)
            dropped.append(str(inbox / name))
            time.sleep(0.5)
            rolled = demo.find("rolled over", after=rolling)
        assert rolled is not None, demo.out
        demo.wait_for("stored ", 240, after=rolled)  # results flow through the new broker
        url = re.search(r"mongodb\s+(mongodb://\S+)\s+database (\S+)", demo.out)
        assert url, demo.out
        db: Any = MongoClient(url.group(1))[url.group(2)]

        def missing() -> set[str]:
            stored = {d["path"] for d in db.images.find({}, {"path": 1})}
            return set(dropped) - stored

        deadline = time.monotonic() + 180
        while missing() and time.monotonic() < deadline:
            time.sleep(1)
        assert not missing(), f"{len(missing())} of {len(dropped)} dropped images never stored"
        assert demo.find("carried the tables over to the new broker", after=rolling) is not None, demo.out
        # Windows that closed before the roll began hold only requests stored and counted on the
        # old broker (it drained first): the new one has their counts only if the tables came over.
        closed = [w for w in counted_windows(worker.group(1)) if w["end"] <= rolling_at]
        assert len(closed) >= 2, (rolling_at, counted_windows(worker.group(1)))
        for window in closed:
            when = {"$gte": datetime.fromtimestamp(window["start"], UTC)}
            when["$lt"] = datetime.fromtimestamp(window["start"] + 10, UTC)  # Faust's "end" is 0.1 s short
            truth = Counter(d["label"] for d in db.images.find({"submitted_at": when}, {"label": 1}))
            assert sum(truth.values()) > 0 and Counter(window["counts"]) == truth, (window, truth)
        assert "carried the promotion of efficientnet-lite0:1.0.0 over" in demo.out, demo.out
        assert asyncio.run(read_current(on_broker)) == promoted
    finally:
        demo.interrupt()
    out = demo.out
    assert demo.proc.returncode == 0, "".join(demo.lines[-40:])
    assert "did not drain" not in out, out  # and so nothing was lost with the old broker
    assert len(demo.pids()["tansu"]) >= 2 and len(demo.pids()["worker1"]) >= 2, demo.pids()
    assert not [p for pids in demo.pids().values() for p in pids if alive(p)], "children left running"
    # Only the roll-over speaks up: no child died on its own.
    assert not [line for line in demo.lines if line.startswith("!!") and "roll" not in line.lower()], out


def test_a_service_that_ignores_sigterm_is_killed_and_stop_goes_on(tmp_path: Path):
    from devstack.embedded import Service

    stubborn = Service("stubborn", 0, tmp_path / "stubborn.log", grace=0.5)
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    stubborn.start([sys.executable, "-c", ignore_term])
    assert stubborn.proc is not None
    time.sleep(0.5)  # let it install its handler
    stubborn.stop()  # must not raise
    assert stubborn.proc.returncode == -signal.SIGKILL
    stubborn.stop()  # idempotent


def test_a_carry_that_cannot_read_the_old_broker_writes_nothing_and_says_so(tmp_path: Path):
    """The roll goes on without the tables (the launcher says the counts start again)."""
    from devstack.embedded import free_port
    from devstack.rollover import TableCarrier

    carrier = TableCarrier(f"127.0.0.1:{free_port()}", "imgflow-", tmp_path, timeout=60)
    assert carrier.read is None
    assert carrier.write() is None
    assert carrier.proc.returncode not in (0, None)
    assert "Error" in carrier.log.read_text()  # why, for the person reading the logs
