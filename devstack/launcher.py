"""One command for the whole stack: ``python -m devstack.launcher demo`` (``make demo``).

Starts what is not configured (an embedded Kafka-protocol broker unless
``BROKER_URL`` is set, an embedded MongoDB-protocol server unless ``MONGO_URL``
is set), builds the default model if missing, then runs N workers, the
simulator and the dashboard as child processes. Ctrl-C (or SIGTERM) stops
every process it started, newest first, by PID.
"""

from __future__ import annotations

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

import click

from devstack.embedded import (
    Service,
    free_port,
    shared_cores,
    start_broker,
    start_mongo,
    wait_for_port,
    worker_argv,
)
from devstack.rollover import BrokerWatch, TableCarrier, broker_warn_mb, chain_held, wait_drained
from imgflow.settings import Settings

log = logging.getLogger("devstack.launcher")


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

    #: The embedded broker's watch, if the launcher started the broker.
    watch: BrokerWatch | None = None
    #: How each spawned child was started (name -> argv, port, extra env), to start it again.
    specs: dict[str, tuple[list[str], int, dict[str, str]]] = field(default_factory=dict)

    def spawn(self, name: str, argv: list[str], port: int = 0, env: dict[str, str] | None = None) -> Service:
        self.specs[name] = (argv, port, env or {})
        svc = Service(name, port, self.home / "logs" / f"{name}.log")
        svc.start(argv, env={**self.env, **(env or {})})
        self.services.append(svc)
        return svc

    def named(self, *prefixes: str) -> list[Service]:
        return [svc for svc in self.services if svc.name.startswith(prefixes)]

    def retire(self, svc: Service) -> None:
        log.info("stopping %s (pid %s)", svc.name, svc.pid)
        svc.stop()
        self.services.remove(svc)
        self.reported.discard(svc.name)

    def roll_broker(self, settings: Settings, drain_timeout: float = 300.0) -> Service:
        """Swap the embedded broker for a fresh one, losing nothing that was submitted.

        The embedded broker keeps every record in memory without retention and reads a
        partition in time that grows with what it holds (docs/design.md §8), so a long demo
        would fill the machine and slow down. Every result is durable in MongoDB once stored,
        so the launcher stops the inputs (watcher, simulator), waits until the workers have
        committed past every record of the chain, stops them, reads the tables' changelogs
        (compacted: the last value per key), starts an empty broker on the same port, writes
        them there (positions rebased, devstack/rebase.py), clears the workers' local table state
        (it belongs to the old changelogs) and starts everything again: the workers recover
        the live window counts from the carried changelogs. The watcher's journal and the
        simulator pick up where they were. A promoted default model (imgflow/control.py) is
        carried over too.
        """
        from imgflow.broker import wait_for_broker
        from imgflow.control import Promotion
        from lifecycle import promote as promotion

        on_broker = settings.model_copy(update={"broker_url": self.env["BROKER_URL"]})
        [broker] = self.named("tansu")
        inputs = self.named("watcher", "simulator")
        workers = self.named("worker")
        for svc in inputs:
            self.retire(svc)
        left = wait_drained(self.env["BROKER_URL"], settings, drain_timeout)
        if left:
            # A worker that cannot go on (see its log): the machine's memory comes first.
            print(
                f"!! the chain did not drain in {drain_timeout:.0f}s ({left} records not yet processed "
                "are lost with the old broker); rolling over anyway",
                flush=True,
            )
        for svc in workers:
            self.retire(svc)
        promoted = asyncio.run(promotion.read_current(on_broker))
        carrier = TableCarrier(on_broker.bootstrap_servers[0], f"{settings.app_id}-", self.home / "logs")
        index = self.services.index(broker)
        self.retire(broker)
        fresh = start_broker(self.home / "logs", port=broker.port)
        self.services.insert(index, fresh)
        carried = carrier.write()
        if carried is None:
            print(
                f"!! the tables could not be carried over (see {carrier.log}): the live counts start again",
                flush=True,
            )
        else:
            print(f"   carried the tables over to the new broker ({carried:,} entries)", flush=True)
        if promoted is not None:

            async def carry(record: Promotion) -> None:
                await wait_for_broker(on_broker.bootstrap_servers)
                await promotion.publish(on_broker, record)

            asyncio.run(carry(promoted))
            print(f"   carried the promotion of {promoted.model} over to the new broker", flush=True)
        for svc in workers:
            data_dir = self.specs[svc.name][2].get("IMGFLOW_DATA_DIR")
            if data_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
            again = self.respawn(svc.name)
            assert again.proc is not None
            wait_for_port(again.port, again.proc, 120, again.name)
        for svc in inputs:
            self.respawn(svc.name)
        return fresh

    def respawn(self, name: str) -> Service:
        """Start a child again as it was first started."""
        argv, port, env = self.specs[name]
        return self.spawn(name, argv, port, env)

    @property
    def roll_due(self) -> bool:
        return self.watch is not None and self.watch.due

    def roll_if_due(self, settings: Settings) -> None:
        if self.watch is not None and self.watch.due:
            began = time.monotonic()
            fresh = self.roll_broker(settings)
            assert fresh.pid is not None
            self.watch.rolled(fresh.pid, time.monotonic() - began)

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
        for svc in reversed(list(self.services)):
            self.retire(svc)


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
        mongo = start_mongo(
            stack.home / "mongo", logs, port=port_or_free(27017), cache_size=settings.mongo_cache_size
        )
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
    settings: Settings, started: float | None, check: Callable[[], None], until: Callable[[], bool]
) -> bool:
    """Print each stored result as it lands (the one result reader, not a poll), until
    ``until()`` (a broker roll-over is due). Whether the first result was printed
    (``started``: not yet, and when the launcher started)."""
    from imgflow.fields import MalformedMessage
    from imgflow.records import Stored, parse
    from sources.results import ResultReader

    async with ResultReader(settings, kinds=("stored",)) as reader:
        while True:
            check()
            if until():
                break
            for _, value in await reader.read(1.0):
                with suppress(MalformedMessage):
                    stored = parse(Stored, value)
                    if started is not None:
                        print(f"first result stored {time.monotonic() - started:.1f}s after start")
                        started = None
                    print(
                        f"stored {stored.image_id[:12]}  {stored.label:<28} "
                        f"{stored.score:.2f}  {stored.model} {stored.model_version}",
                        flush=True,
                    )
    return started is None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("command", type=click.Choice(["demo"]))
@click.option("--workers", type=int, default=2, show_default=True, help="Workers to start.")
@click.option("--rate", type=float, default=5.0, show_default=True, help="Simulator images/s.")
@click.option("--no-dashboard", is_flag=True, help="Do not start the dashboard.")
@click.option("--quiet", is_flag=True, help="Do not print each stored result.")
def main(command: str, workers: int, rate: float, no_dashboard: bool, quiet: bool) -> None:
    """Run the whole stack: embedded services unless configured, workers, simulator, dashboard."""
    sys.exit(demo(workers, rate, no_dashboard, quiet))


def demo(workers: int, rate: float, no_dashboard: bool, quiet: bool) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    settings = Settings()
    home = settings.home.resolve()
    started = time.monotonic()
    stack = Stack(home=home, env={"IMGFLOW_HOME": str(home)})

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

            stack.watch = BrokerWatch(
                broker.pid,
                broker_warn_mb(settings),
                stack.env["MONGO_URL"],
                settings.mongo_db,
                roll=settings.broker_roll,
                roll_records=settings.broker_roll_records,
                held=chain_held(stack.env["BROKER_URL"].split("://", 1)[-1], settings),
            )
            stack.checks.append(stack.watch)
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
        for i in range(workers):
            port = port_or_free(settings.web_port + i)
            web_ports.append(port)
            # RocksDB locks a data dir per process: worker N keeps its own across demos, under
            # IMGFLOW_DATA_DIR if set, else IMGFLOW_HOME/faust.
            data_dir = (settings.data_dir or home / "faust") / f"worker{i + 1}"
            if embedded_broker:
                # A new embedded broker starts empty (memory only): tables kept from the last
                # one are ahead of its changelogs, and Faust refuses to start on them.
                shutil.rmtree(data_dir, ignore_errors=True)
            stack.spawn(
                f"worker{i + 1}",
                worker_argv(port),
                port,
                env={"IMGFLOW_DATA_DIR": str(data_dir), **shared_cores(workers)},
            )
        stack.spawn("watcher", [faust_bin, "-A", "imgflow", "watch", str(inbox)])
        stack.spawn(
            "simulator",
            [
                faust_bin,
                "-A",
                "imgflow",
                "simulate",
                "--rate",
                str(rate),
                "--folder",
                str(settings.dataset_path.resolve()),
            ],
        )
        dash_port = 0
        dash_auth = ""
        if not no_dashboard and (Path(__file__).parent.parent / "dashboard" / "app.py").exists():
            from dashboard.serve import AuthConfigError, serve_command

            dash_port = port_or_free(5006)
            origins = [f"127.0.0.1:{dash_port}", f"localhost:{dash_port}"]
            try:
                # Basic auth when IMGFLOW_DASHBOARD_AUTH_FILE is set (docs/deployment.md "Security").
                dash_argv, dash_env = serve_command(
                    settings, address="127.0.0.1", port=dash_port, origins=origins
                )
            except AuthConfigError as exc:
                raise SystemExit(f"dashboard: {exc}") from None
            dash_auth = " (login required)" if dash_env else ""
            if not os.environ.get("IMGFLOW_WORKER_URLS"):
                # The workers it started, on the ports they got: the default (6066) may be another
                # stack's worker, or nobody, when that port was taken.
                urls = ",".join(f"http://127.0.0.1:{port}" for port in web_ports)
                dash_env = {"IMGFLOW_WORKER_URLS": urls, **dash_env}
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
        tail = Settings(BROKER_URL=stack.env["BROKER_URL"])
        first: float | None = started
        while True:
            # Outside the result tail's loop: its reader is closed while the old broker is up.
            stack.roll_if_due(settings)
            if quiet:
                stack.report_exits()
                time.sleep(1)
            elif asyncio.run(tail_stored(tail, first, stack.report_exits, lambda: stack.roll_due)):
                first = None
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    main()
