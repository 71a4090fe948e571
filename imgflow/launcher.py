"""One command for the whole stack: ``python -m imgflow.launcher demo`` (``make demo``).

Starts what is not configured (an embedded Kafka-protocol broker unless
``BROKER_URL`` is set, an embedded MongoDB-protocol server unless ``MONGO_URL``
is set), builds the default model if missing, then runs N workers, the
simulator and the dashboard as child processes. Ctrl-C (or SIGTERM) stops
every process it started, newest first, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from imgflow.embedded import Service, free_port, start_broker, start_mongo, wait_for_port, worker_argv
from imgflow.settings import Settings

log = logging.getLogger("imgflow.launcher")

BIN = Path(sys.executable).parent


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


@dataclass
class Stack:
    """Everything one launcher started, stopped in reverse order."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    #: Called with every exit check (about once a second): the broker memory watch.
    checks: list[Callable[[], None]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], port: int = 0, env: dict[str, str] | None = None) -> Service:
        svc = Service(name, port, self.home / "logs" / f"{name}.log")
        svc.start(argv, env={**self.env, **(env or {})})
        self.services.append(svc)
        return svc

    def report_exits(self) -> None:
        """Say once when a child ended on its own (a crash, or a finished simulator)."""
        for svc in self.services:
            code = svc.proc.poll() if svc.proc else None
            if code is not None and svc.name not in self.reported:
                self.reported.add(svc.name)
                print(
                    f"!! {svc.name} (pid {svc.pid}) exited with code {code}; see {svc.log_path}", flush=True
                )
        for check in self.checks:
            check()

    def stop(self) -> None:
        for svc in reversed(self.services):
            log.info("stopping %s (pid %s)", svc.name, svc.pid)
            svc.stop()
        self.services.clear()


@dataclass
class BrokerMemoryWatch:
    """Say so (in this output and on the dashboard) when the embedded broker nears its memory limit.

    The embedded broker keeps every record in memory (DESIGN section 8): checked every
    ``every`` seconds; warned at ``warn_mb`` and again each time it grew another 10%.
    """

    pid: int
    warn_mb: float
    mongo_url: str
    db_name: str
    every: float = 10.0
    _due: float = 0.0
    _warned_mb: float = 0.0

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
        message = notices.broker_memory(rss_mb, self.warn_mb)
        if message is None or rss_mb < self._warned_mb * 1.1:
            return
        self._warned_mb = rss_mb
        print(f"!! {message}", flush=True)
        from imgflow.mongo import connect

        client = connect(self.mongo_url, serverSelectionTimeoutMS=2000)
        try:
            notices.post(client[self.db_name], "broker-memory", message)
        except Exception as exc:  # the output has it; the dashboard is a second channel
            log.warning("could not post the broker memory notice: %s", exc)
        finally:
            client.close()


def broker_warn_mb(settings: Settings) -> float:
    import psutil

    return settings.broker_memory_warn_mb or psutil.virtual_memory().total / 1e6 / 4


def start_infrastructure(stack: Stack, settings: Settings) -> None:
    logs = stack.home / "logs"
    if os.environ.get("BROKER_URL"):
        stack.env["BROKER_URL"] = os.environ["BROKER_URL"]
    else:
        broker = start_broker(logs, port=port_or_free(9092))
        stack.services.append(broker)
        stack.env["BROKER_URL"] = broker.url
    if os.environ.get("MONGO_URL"):
        stack.env["MONGO_URL"] = os.environ["MONGO_URL"]
    else:
        mongo = start_mongo(stack.home / "mongo", logs, port=port_or_free(27017))
        stack.services.append(mongo)
        stack.env["MONGO_URL"] = mongo.url


def ensure_model(settings: Settings) -> Path:
    spec = settings.model_spec_path
    if settings.model is None:
        from models.efficientnet_lite import build_default_model

        # Once: returns at once when the folder holds the current default (TFLite) model.
        build_default_model(spec.parent)
    if not spec.exists():
        raise SystemExit(f"model spec not found: {spec} (set IMGFLOW_MODEL)")
    return spec


async def tail_stored(
    settings: Settings, stop: asyncio.Event, started: float, check: Callable[[], None]
) -> None:
    """Print each stored result as it lands (the one result reader, not a poll)."""
    from imgflow.records import MalformedMessage, Stored, parse
    from imgflow.sources.results import ResultReader

    first = True
    async with ResultReader(settings, kinds=("stored",)) as reader:
        while not stop.is_set():
            check()
            for _, value in await reader.read(1.0):
                with suppress(MalformedMessage):
                    stored = parse(Stored, value)
                    if first:
                        print(f"first result stored {time.monotonic() - started:.1f}s after start")
                        first = False
                    print(
                        f"stored {stored.image_id[:12]}  {stored.label:<28} "
                        f"{stored.score:.2f}  {stored.model} {stored.model_version}",
                        flush=True,
                    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgflow.launcher")
    parser.add_argument("command", choices=["demo"], help="what to run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=5.0, help="simulator images/s")
    parser.add_argument("--no-dashboard", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="do not print each stored result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    settings = Settings()
    home = settings.home.resolve()
    started = time.monotonic()
    stack = Stack(home=home, env={"IMGFLOW_HOME": str(home)})
    stopping = asyncio.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # The first Ctrl-C (or SIGTERM) stops everything; more of them while that runs are
        # noted, not raised into the middle of the stop (which would leave children running).
        signal.signal(signal.SIGTERM, still_stopping)
        signal.signal(signal.SIGINT, still_stopping)
        raise KeyboardInterrupt

    def still_stopping(signum: int, _frame: object) -> None:
        print("already stopping; waiting for every service to exit", flush=True)

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C too, explicitly: a process started in the background by a non-interactive shell
    # (nohup, CI scripts) inherits SIGINT ignored, and Python then leaves it ignored.
    signal.signal(signal.SIGINT, on_signal)
    try:
        embedded_broker = not os.environ.get("BROKER_URL")
        if embedded_broker:
            # The embedded broker keeps every record in memory, without retention: the pixels
            # travel beside the messages, in MongoDB (imgflow/tensors.py), unless told otherwise.
            stack.env["IMGFLOW_TENSOR_STORE"] = os.environ.get("IMGFLOW_TENSOR_STORE", "mongo")
        start_infrastructure(stack, settings)
        broker = next((svc for svc in stack.services if svc.name == "tansu"), None)
        if broker is not None and broker.pid is not None:
            from imgflow import notices
            from imgflow.mongo import connect

            client = connect(stack.env["MONGO_URL"])
            notices.clear(client[settings.mongo_db], "broker-memory")  # a new broker starts empty
            client.close()
            watch = BrokerMemoryWatch(
                broker.pid, broker_warn_mb(settings), stack.env["MONGO_URL"], settings.mongo_db
            )
            stack.checks.append(watch)
        ensure_model(settings)
        from simulator.dataset import write_dataset

        dataset = write_dataset(settings.dataset_path.resolve())
        faust_bin = str(BIN / "faust")
        inbox = home / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        # Workers read only inside their image roots; the watcher below is given the inbox as an
        # argument, so the workers are told about it here (the dataset is under IMGFLOW_HOME).
        stack.env["IMGFLOW_IMAGE_ROOTS"] = ",".join(filter(None, [settings.image_roots, str(inbox)]))
        web_ports = []
        for i in range(args.workers):
            port = port_or_free(settings.web_port + i)
            web_ports.append(port)
            # RocksDB locks a data dir per process: worker N keeps its own across demos, under
            # IMGFLOW_DATA_DIR if set, else IMGFLOW_HOME/faust.
            data_dir = (settings.data_dir or home / "faust") / f"worker{i + 1}"
            if embedded_broker:
                # A new embedded broker starts empty (memory only): tables kept from the last
                # one are ahead of its changelogs, and Faust refuses to start on them.
                shutil.rmtree(data_dir, ignore_errors=True)
            stack.spawn(f"worker{i + 1}", worker_argv(port), port, env={"IMGFLOW_DATA_DIR": str(data_dir)})
        stack.spawn("watcher", [faust_bin, "-A", "imgflow", "watch", str(inbox)])
        stack.spawn(
            "simulator",
            [
                faust_bin,
                "-A",
                "imgflow",
                "simulate",
                "--rate",
                str(args.rate),
                "--folder",
                str(settings.dataset_path.resolve()),
            ],
        )
        dash_port = 0
        dash_auth = ""
        if not args.no_dashboard and (Path(__file__).parent.parent / "dashboard" / "app.py").exists():
            from dashboard.serve import AuthConfigError, serve_command

            dash_port = port_or_free(5006)
            origins = [f"127.0.0.1:{dash_port}", f"localhost:{dash_port}"]
            try:
                # Basic auth when IMGFLOW_DASHBOARD_AUTH_FILE is set (README "Security"), else open.
                dash_argv, dash_env = serve_command(
                    settings, address="127.0.0.1", port=dash_port, origins=origins
                )
            except AuthConfigError as exc:
                raise SystemExit(f"dashboard: {exc}") from None
            dash_auth = " (login required)" if dash_env else ""
            stack.spawn("dashboard", dash_argv, dash_port, env=dash_env)
        print(
            "\nimgflow demo is running (Ctrl-C stops everything):\n"
            f"  broker      {stack.env['BROKER_URL']}\n"
            f"  mongodb     {stack.env['MONGO_URL']}  database {settings.mongo_db}\n"
            f"  dataset     {len(dataset)} images in {settings.dataset_path}\n"
            + "".join(f"  worker {i + 1}    http://127.0.0.1:{p}/health/\n" for i, p in enumerate(web_ports))
            + (f"  dashboard   http://127.0.0.1:{dash_port}/app{dash_auth}\n" if dash_port else "")
            + f"  inbox       drop images into {inbox} (watched folder)\n"
            + f"  logs        {home / 'logs'}\n"
            f"  results     MONGO_URL={stack.env['MONGO_URL']} {BIN / 'faust'} -A imgflow latest\n",
            flush=True,
        )
        for svc in stack.services:
            if svc.name.startswith("worker") and svc.proc is not None:
                wait_for_port(svc.port, svc.proc, 120, svc.name)
        if args.quiet:
            while True:
                stack.report_exits()
                time.sleep(1)
        else:
            tail = Settings(BROKER_URL=stack.env["BROKER_URL"])
            asyncio.run(tail_stored(tail, stopping, started, stack.report_exits))
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
