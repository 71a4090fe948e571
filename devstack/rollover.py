"""The embedded broker's roll-over: when it holds too much, the chain moves to a fresh one.

The embedded broker keeps every record in memory and lists them all on each fetch
(docs/design.md §8), so the launcher watches it (:class:`BrokerWatch`: its memory, the
fullest partition of the chain) and, past a limit, drains the chain (:func:`wait_drained`),
carries the tables' changelogs over in a child process (:class:`TableCarrier`,
``devstack/carry.py``) and starts everything again on an empty broker
(``Stack.roll_broker`` in ``devstack/launcher.py``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgflow.settings import Settings

log = logging.getLogger("devstack.launcher")


class TableCarrier:
    """``python -m devstack.carry`` for one roll-over: reads the tables' changelogs from the old
    broker when made (blocks until it has them), writes them to the new one on :meth:`write`.

    A child process, so the launcher's own memory never holds a table (it runs for days)."""

    def __init__(self, bootstrap: str, prefix: str, logs: Path, timeout: float = 300.0) -> None:
        import subprocess

        self.log, self.timeout = logs / "carry.log", timeout
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "devstack.carry", bootstrap, prefix],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        self.read = self._number(self.proc.stdout.readline(), "read")

    @staticmethod
    def _number(line: str, word: str) -> int | None:
        head, _, count = line.strip().partition(" ")
        return int(count) if head == word and count.isdigit() else None

    def write(self) -> int | None:
        """Tell it to write (the new broker is started); the entries written, None if it failed."""
        import subprocess

        assert self.proc.stdin is not None and self.proc.stdout is not None
        written = None
        try:
            if self.read is not None:
                self.proc.stdin.write("write\n")
                self.proc.stdin.flush()
                written = self._number(self.proc.stdout.readline(), "wrote")
            self.proc.stdin.close()
            self.proc.wait(self.timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
            return None
        return written if self.proc.returncode == 0 else None


#: The chain's topics, each consumed by the app's consumer group.
CHAIN = ("paths", "tensors", "predictions", "stored", "failed")


def wait_drained(broker_url: str, settings: Settings, timeout: float) -> int:
    """Records of the chain the app's group has not committed past, once that is 0 for three
    readings a second apart or ``timeout`` has passed (-1: the broker did not say).

    A record still inside a worker (read, not yet passed on) is committed only after its
    output is published, so it shows as a backlog on one topic or the next.
    """
    from devstack.kafka import backlog

    bootstrap = broker_url.split("://", 1)[-1]
    topics = [settings.topic(stage) for stage in CHAIN]
    deadline = time.monotonic() + timeout
    zeros, waiting = 0, -1
    while time.monotonic() < deadline:
        try:  # called between result tails (Stack.roll_if_due): no event loop is running
            waiting = asyncio.run(backlog(bootstrap, settings.app_id, topics, settings.partitions))
        except Exception as exc:  # a topic not created yet, a broker hiccup: ask again
            log.info("backlog unknown: %s", exc)
            waiting = -1
        zeros = zeros + 1 if waiting == 0 else 0
        if zeros == 3:
            return 0
        time.sleep(1.0)
    return waiting


@dataclass
class BrokerWatch:
    """Say so (in this output and on the dashboard) when the embedded broker nears a limit.

    The embedded broker keeps every record in memory and lists every record of a partition on
    each read of it (docs/design.md §8), so both its memory and its CPU per image grow with what
    it holds. Checked every ``every`` seconds: its memory beyond what it held once the stack was
    up (``started_mb``) against ``warn_mb``, and the records of the fullest partition of the
    chain (read by ``held``) against ``roll_records`` (0: not watched). Warned again each
    time it grew another 10%, or with ``roll`` swapped for a fresh broker at the first limit.
    """

    pid: int
    warn_mb: float
    mongo_url: str
    db_name: str
    every: float = 10.0
    #: Past a limit, ask for the broker to be swapped for a fresh one (``due``; the launcher's
    #: loop calls ``Stack.roll_broker`` then :meth:`rolled`) instead of only warning.
    roll: bool = False
    due: bool = False
    #: The broker's memory when the stack was up (None: take the first sample; after a roll
    #: the fresh broker's first sample, once the workers have joined and made their topics).
    started_mb: float | None = None
    roll_records: int = 0
    #: Reads the records the fullest partition of the chain holds (None: unknown just now).
    held: Callable[[], int | None] = lambda: None
    _due: float = 0.0
    _warned: float = 0.0
    _reached: str = ""

    def __call__(self) -> None:
        import psutil

        from imgflow import notices

        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every
        try:
            rss_mb = psutil.Process(self.pid).memory_info().rss / 1e6
        except psutil.Error:
            return
        if self.started_mb is None:
            self.started_mb = rss_mb
        message, size, reached = None, 0.0, ""
        if rss_mb - self.started_mb >= self.warn_mb:
            message, size = notices.broker_memory(rss_mb, self.warn_mb), rss_mb
            reached = f"{rss_mb:,.0f} MB (limit {self.warn_mb:,.0f} MB)"
        elif self.roll_records:
            held = self.held()
            if held is not None and held >= self.roll_records:
                message, size = notices.broker_records(held, self.roll_records), float(held)
                reached = f"{held:,} records in one partition (limit {self.roll_records:,})"
        if message is None:
            return
        if self.roll:
            if not self.due:
                print(f"!! {message} Rolling over to a fresh broker now.", flush=True)
                self.due, self._reached = True, reached
            return
        if size < self._warned * 1.1:
            return
        self._warned = size
        print(f"!! {message}", flush=True)
        self.post(message)

    def rolled(self, pid: int, seconds: float) -> None:
        """The broker was swapped for a fresh one (``pid``): say so, and watch that one."""
        from imgflow import notices

        message = notices.broker_rolled(self._reached)
        print(f"!! {message} ({seconds:.0f}s)", flush=True)
        self.post(message, level="info")
        self.pid, self.due, self._warned = pid, False, 0.0
        self.started_mb = None  # measured at the next check, a full interval from now
        self._due = time.monotonic() + self.every

    def post(self, message: str, level: str = "warning") -> None:
        from imgflow import notices
        from imgflow.mongo import connect

        client = connect(self.mongo_url, serverSelectionTimeoutMS=2000)
        try:
            notices.post(client[self.db_name], "broker-memory", message, level=level)
        except Exception as exc:  # the output has it; the dashboard is a second channel
            log.warning("could not post the broker notice: %s", exc)
        finally:
            client.close()


def chain_held(bootstrap: str, settings: Settings) -> Callable[[], int | None]:
    """A reader of the records the fullest partition of the chain holds (for :class:`BrokerWatch`).

    It asks the broker in a thread of its own: the watch is called from inside the launcher's
    result tail (an event loop) as well as outside it.
    """
    from concurrent.futures import ThreadPoolExecutor

    from devstack.kafka import largest_partition

    topics = [settings.topic(stage) for stage in CHAIN]
    pool = ThreadPoolExecutor(1, thread_name_prefix="broker-held")

    def held() -> int | None:
        future = pool.submit(asyncio.run, largest_partition(bootstrap, topics, settings.partitions))
        try:
            return future.result(timeout=30)
        except Exception as exc:  # a broker just starting, a hiccup: the next check asks again
            log.info("records held unknown: %s", exc)
            return None

    return held


def broker_warn_mb(settings: Settings) -> float:
    import psutil

    return settings.broker_memory_warn_mb or psutil.virtual_memory().total / 1e6 / 4
