"""Which model classifies new images: data on a control topic that every worker follows.

``faust -A imgflow promote SPEC`` appends a record to ``<prefix>-control`` (one partition,
compacted on real Kafka: only the latest record per key is needed); every worker reads that
topic from its beginning with a consumer of its own (no group, so each worker sees every
record) and keeps following it. A worker switches its default when a promotion arrives:
it loads the promoted model first and only then sends new images to it, so nothing waits
for a load and a model that does not load is refused (logged, counted, the old default
kept) instead of failing images. Images already decoded for the old default finish with
it; every prediction keeps its model and version, so a switch shows in the counts per
model and in ``compare``.

A record carries the spec paths promoted before it (``history``), so ``promote --rollback``
goes back one step without reading the topic's past, which compaction would have removed.
An empty ``spec`` means "the configured default" (``IMGFLOW_MODEL``).

Until a worker has read the topic to its end it does not decode (:meth:`ActiveModel.default`):
a restarted worker must not classify a burst of images with a model that was retired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mode import Service

from imgflow.fields import MalformedMessage, json_object
from imgflow.metrics import METRICS
from imgflow.settings import Settings
from imgflow.signing import HEADER, Headers, verified
from models.registry import ModelCache, ModelRegistry, registry_for

log = logging.getLogger(__name__)

KEY = b"default-model"
#: Spec paths a promotion remembers for rollbacks.
HISTORY = 20


#: Longest model reference (a spec path or name) and free text a control record may hold.
MAX_REF_CHARS = 1024
MAX_TEXT_CHARS = 256


@dataclass(frozen=True)
class Promotion:
    spec: str  # a registered model: its spec path (as promote writes it) or name; "" = the configured default
    model: str  # name:version, for people and the dashboard
    promoted_at: float
    by: str
    history: list[str] = field(default_factory=list)  # earlier specs, most recent last

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> Promotion:
        """A control record, strictly: anything else is :class:`MalformedMessage` (the
        control topic is an input like any other; one bad record must not stop a worker)."""
        data = json_object(value)
        unknown = sorted(set(data) - {"spec", "model", "promoted_at", "by", "history"})
        if unknown:
            raise MalformedMessage(f"unknown field(s) in a control record: {', '.join(unknown)[:200]}")
        spec, model, by = data.get("spec"), data.get("model"), data.get("by", "")
        for name, text, limit in (
            ("spec", spec, MAX_REF_CHARS),
            ("model", model, MAX_TEXT_CHARS),
            ("by", by, MAX_TEXT_CHARS),
        ):
            if not isinstance(text, str) or len(text) > limit or "\x00" in text:
                raise MalformedMessage(
                    f"control record field {name!r} must be text of at most {limit} characters"
                )
        if not model:
            raise MalformedMessage("control record field 'model' must not be empty")
        promoted_at = data.get("promoted_at")
        if (
            isinstance(promoted_at, bool)
            or not isinstance(promoted_at, int | float)
            or not math.isfinite(promoted_at)
            or promoted_at < 0
        ):
            raise MalformedMessage("control record field 'promoted_at' must be a finite, non-negative time")
        history = data.get("history", [])
        if (
            not isinstance(history, list)
            or len(history) > HISTORY
            or not all(isinstance(h, str) and len(h) <= MAX_REF_CHARS and "\x00" not in h for h in history)
        ):
            raise MalformedMessage(
                f"control record field 'history' must be a list of at most {HISTORY} model references"
            )
        return cls(
            spec=str(spec),
            model=str(model),
            promoted_at=float(promoted_at),
            by=str(by),
            history=list(history),
        )


def control_topic(settings: Settings) -> str:
    return settings.topic("control")


def control_key(settings: Settings) -> str | None:
    """The key control records are signed with (``IMGFLOW_CONTROL_KEY``), if one is set."""
    return settings.control_key.get_secret_value() if settings.control_key is not None else None


async def ensure_topic(settings: Settings) -> None:
    """Create the control topic (one partition, compacted) if it is not there."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        topic = NewTopic(control_topic(settings), 1, 1, topic_configs={"cleanup.policy": "compact"})
        await admin.create_topics([topic])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


class ActiveModel(Service):
    """This worker's default model, following the control topic (module docstring)."""

    def __init__(
        self, settings: Settings, models: ModelCache, registry: ModelRegistry | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.models = models
        self.registry = registry or registry_for(settings.model_dir_paths, settings.model_spec_path)
        self.key = control_key(settings)
        self.spec_path: Path = settings.model_spec_path
        self.promotion: Promotion | None = None  # the one applied
        self.refused: Promotion | None = None  # the latest that did not load
        self.switched_at: float | None = None
        self._caught_up = asyncio.Event()

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    async def default(self) -> Path:
        """The default spec path, once the control topic has been read to its end."""
        await self._caught_up.wait()
        return self.spec_path

    async def on_start(self) -> None:
        if self.key is None:
            log.warning(
                "control records are not signed: anyone who can produce to %s can switch this worker's "
                "model (set IMGFLOW_CONTROL_KEY on the workers and where promote runs)",
                control_topic(self.settings),
            )
        self.add_future(self._follow())

    def take(self, offset: int, value: bytes, headers: Headers | None) -> Promotion | None:
        """A control record as this worker takes it: signed with the key (when one is set) and
        well formed; anything else is refused, counted and logged, and the model kept."""
        try:
            if not verified(self.key, value, headers):
                raise MalformedMessage(f"not signed with IMGFLOW_CONTROL_KEY (header {HEADER})")
            return Promotion.decode(value)
        except MalformedMessage as exc:
            METRICS.promotions.labels("refused").inc()
            log.error(
                "control record at %s offset %d refused, keeping %s: %s",
                control_topic(self.settings),
                offset,
                self.spec_path,
                exc,
            )
            return None

    async def _follow(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        tp = TopicPartition(control_topic(self.settings), 0)
        while not self.should_stop:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.bootstrap_servers,
                enable_auto_commit=False,
                fetch_max_wait_ms=500,
                client_id=f"imgflow-control-{socket.gethostname()}",
            )
            try:
                await ensure_topic(self.settings)
                await consumer.start()
                consumer.assign([tp])
                await consumer.seek_to_beginning(tp)
                end = (await consumer.end_offsets([tp]))[tp]
                while not self.should_stop:
                    latest = None
                    for msg in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                        if msg.key == KEY and msg.value:
                            latest = self.take(msg.offset, msg.value, msg.headers) or latest
                    if latest is not None:
                        await self._switch(latest)
                    if not self.caught_up and await consumer.position(tp) >= end:
                        self._caught_up.set()
                        log.info("default model: %s", self.spec_path)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                log.warning("following %s failed (%s); again in 2 s", tp.topic, exc)
                await asyncio.sleep(2)
            except Exception:  # a bug: logged with its traceback, and the service goes on
                log.exception("following %s failed; again in 2 s", tp.topic)
                await asyncio.sleep(2)
            finally:
                await consumer.stop()

    async def _switch(self, promotion: Promotion) -> None:
        path = promotion.spec or str(self.settings.model_spec_path)
        if promotion in (self.promotion, self.refused):
            return
        try:
            # Registered models only, looked for again (a model trained since), off the loop.
            await asyncio.to_thread(self.registry.scan)
            spec = await self.registry.aresolve(path)
            await self.models.get(spec)
        except Exception as exc:
            METRICS.promotions.labels("refused").inc()
            log.error(
                "promoted model %s (%s) does not load, keeping %s: %s",
                promotion.model,
                path,
                self.spec_path,
                exc,
            )
            self.refused = promotion  # not retried until the next promotion
            return
        previous, self.spec_path, self.promotion = self.spec_path, spec.spec_path, promotion
        self.switched_at = time.time()
        METRICS.promotions.labels("applied").inc()
        METRICS.active_model.clear()
        METRICS.active_model.labels(spec.key).set(1)
        log.info(
            "default model is now %s (%s, was %s), promoted by %s %.1f s ago",
            spec.key,
            spec.spec_path,
            previous,
            promotion.by,
            self.switched_at - promotion.promoted_at,
        )
