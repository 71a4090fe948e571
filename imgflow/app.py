"""Builds the Faust app and nothing else; stages are found by autodiscovery.

Building it opens nothing and patches nothing: a worker installs imgflow's
fixes to Faust's consumer (imgflow/faust_fixes/consumer.py) and starts its resources
(imgflow/resources.py) when it starts, so the dashboard or a test can import
the settings, records or queries without side effects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import faust
from mode import ServiceT

from imgflow.auth import token_middleware
from imgflow.broker import wait_for_broker
from imgflow.faust_fixes import consumer as safe_consumer
from imgflow.faust_fixes import liveness
from imgflow.resources import Resources
from imgflow.settings import get_settings

log = logging.getLogger(__name__)

settings = get_settings()


class App(faust.App):
    #: The worker's clients, threads and model cache, started before the agents.
    resources: Resources

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        # First in the list: started before the consumer and the agents, stopped after them.
        return [self.resources, *super().on_init_dependencies()]

    async def on_first_start(self) -> None:
        from imgflow.faust_fixes.worker import MMAP_THRESHOLD, return_large_blocks

        # Before anything decodes: large freed blocks go back to the system (imgflow/faust_fixes/worker.py).
        if return_large_blocks():
            log.info("freed blocks of %d KB and more go back to the system (mallopt)", MMAP_THRESHOLD // 1024)
        # Never commit past an unacknowledged message; never drop a delivered one on recovery.
        safe_consumer.install(fetch_max_wait_ms=settings.fetch_max_wait_ms)
        # Faust creates its data dir without parents; IMGFLOW_HOME may not exist yet.
        self.conf.datadir.mkdir(parents=True, exist_ok=True)
        await super().on_first_start()
        # Before the producer and consumer start: they give up if the broker is not up yet.
        await wait_for_broker(settings.bootstrap_servers)


app = App(
    settings.app_id,
    broker=settings.broker_url,
    # Tables on local disk (RocksDB via rocksdict) unless IMGFLOW_TABLE_STORE=memory://.
    store=settings.table_store,
    origin="imgflow",
    # No terminal spinner: Faust's sets the root logger to DEBUG for it (imgflow/faust_fixes/worker.py).
    Worker="imgflow.faust_fixes.worker:Worker",
    autodiscover=["agents", "tables", "web", "cli"],
    datadir=settings.faust_datadir,
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    # At least once with idempotent sinks: the embedded broker has no
    # transactional producer (docs/design.md §8).
    processing_guarantee="at_least_once",
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    broker_commit_interval=settings.commit_interval,
    # One record per producer batch keeps changelog recovery exact on Tansu.
    producer_max_batch_size=settings.producer_max_batch_size,
    producer_max_request_size=settings.max_message_bytes,
    consumer_max_fetch_size=settings.max_message_bytes,
    web_host=settings.web_host,
    web_bind=settings.web_bind,
    web_port=settings.web_port,
    web_in_thread=False,
    # IMGFLOW_API_TOKEN guards every view, Faust's own included (imgflow/auth.py).
    web_application_options={"middlewares": [token_middleware(settings)]},
    # /counts/ fans out to active owners; standby copies would be counted twice.
    table_standby_replicas=0,
    table_cleanup_interval=settings.window_seconds,
)
app.resources = Resources(settings)
# Second line of defence against a stalled partition (imgflow/faust_fixes/liveness.py).
liveness.install(app, settings.stall_seconds)
