"""``make demo``'s launcher: the whole embedded stack comes up, results land, Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

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


def test_demo_brings_up_everything_and_ctrl_c_stops_it(tmp_path: Path, default_model_spec: Path):
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "MONGO_URL")},
        "IMGFLOW_HOME": str(tmp_path / "var"),
        "IMGFLOW_MODEL": str(default_model_spec),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgflow.launcher",
            "demo",
            "--workers",
            "1",
            "--no-dashboard",
            "--rate",
            "10",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    first_result = threading.Event()
    stopping = threading.Event()
    started = time.monotonic()
    elapsed: list[float] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("stored ") and not first_result.is_set():
                elapsed.append(time.monotonic() - started)
                first_result.set()
            if line.startswith("stopping..."):
                stopping.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first_result.wait(240), "no stored result from the demo:\n" + "".join(lines[-40:])
        print(f"demo: first stored result {elapsed[0]:.1f}s after the launcher started")
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        # An impatient second Ctrl-C while it stops must not cut the stop short.
        if stopping.wait(60) and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            second = True
        else:
            second = False
        proc.wait(180)
        reader.join(10)
    pids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", "".join(lines))]
    names = re.findall(r"started (\S+) \(pid \d+\)", "".join(lines))
    assert {"tansu", "secantusdb", "worker1", "watcher", "simulator"} <= set(names), names
    assert proc.returncode == 0, "".join(lines[-40:])
    assert not [p for p in pids if alive(p)], "children left running after Ctrl-C"
    out = "".join(lines)
    assert "imgflow demo is running" in out and "stopping..." in out
    assert not second or "already stopping" in out, out
    assert "!!" not in out, out  # no child (worker, watcher, simulator...) died on its own
    assert (tmp_path / "var" / "dataset").is_dir()


def test_a_service_that_ignores_sigterm_is_killed_and_stop_goes_on(tmp_path: Path):
    from imgflow.embedded import Service

    stubborn = Service("stubborn", 0, tmp_path / "stubborn.log", grace=0.5)
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
    stubborn.start([sys.executable, "-c", ignore_term])
    assert stubborn.proc is not None
    time.sleep(0.5)  # let it install its handler
    stubborn.stop()  # must not raise
    assert stubborn.proc.returncode == -signal.SIGKILL
    stubborn.stop()  # idempotent
