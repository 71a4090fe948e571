"""What became of submitted images: the one reader of ``imgflow-stored`` and ``imgflow-failed``.

``submit --wait``, the watcher's lifecycle and the throughput benchmark hear
back through :class:`ResultWatch` and :func:`wait_for_results`; the launcher's
live tail reads through the same :class:`ResultReader`.

:class:`ResultReader` follows ``imgflow-stored`` and ``imgflow-failed`` with a
plain aiokafka consumer (``group_id=None``: no group, no commits, no effect on
the workers) from a position taken *before* the images are published, so no
result can slip past it. On the embedded broker ``end_offsets`` may answer an
offset slightly before the true end (docs/design.md §8); starting early only
means reading a few older records, which :class:`ResultWatch` filters out by
``image_id``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from imgflow.fields import MalformedMessage
from imgflow.records import Failure, Stored, parse
from imgflow.settings import Settings, get_settings


@dataclass(frozen=True)
class Outcome:
    """What became of one image: ``stored`` (with its label) or ``failed`` (with a kind)."""

    image_id: str
    status: str  # stored | failed
    label: str | None = None
    score: float | None = None
    kind: str | None = None
    message: str | None = None
    stage: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def outcome_of(topic_kind: str, raw: bytes | None) -> Outcome | None:
    """Parse a record of ``imgflow-stored`` / ``imgflow-failed``; ``None`` if malformed."""
    try:
        if topic_kind == "stored":
            s = parse(Stored, raw)
            return Outcome(s.image_id, "stored", label=s.label, score=s.score)
        f = parse(Failure, raw)
        return Outcome(f.image_id, "failed", kind=f.kind, message=f.message, stage=f.stage)
    except MalformedMessage:
        return None


@dataclass
class Summary:
    """The tally ``submit --wait`` prints: stored / failed / pending, labels, failure kinds."""

    submitted: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def stored(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == "stored")

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == "failed")

    @property
    def pending(self) -> int:
        return self.submitted - len(self.outcomes)

    @property
    def labels(self) -> Counter[str]:
        return Counter(o.label for o in self.outcomes.values() if o.status == "stored" and o.label)

    @property
    def failure_kinds(self) -> Counter[str]:
        return Counter(o.kind or "unknown" for o in self.outcomes.values() if o.status == "failed")

    def as_json(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "stored": self.stored,
            "failed": self.failed,
            "pending": self.pending,
            "timed_out": self.timed_out,
            "seconds": round(self.seconds, 3),
            "labels": dict(self.labels.most_common()),
            "failure_kinds": dict(self.failure_kinds.most_common()),
        }

    def lines(self) -> list[str]:
        head = f"stored {self.stored}, failed {self.failed}, pending {self.pending} of {self.submitted}"
        out = [f"{head} in {self.seconds:.1f}s" + ("  (timed out)" if self.timed_out else "")]
        if self.labels:
            out.append("labels: " + ", ".join(f"{label} {n}" for label, n in self.labels.most_common()))
        if self.failure_kinds:
            kinds = self.failure_kinds.most_common()
            out.append("failures: " + ", ".join(f"{kind} {n}" for kind, n in kinds))
        return out


class ResultReader:
    """Records of ``imgflow-stored`` / ``imgflow-failed`` from a position taken at :meth:`start`.

    No group, no commits: reading never moves the workers' offsets, and any
    number of readers may run. Topics that exist at the start are read from
    their end; a topic that does not exist yet (no worker has run) is picked up
    from its beginning once it appears. ``kinds`` chooses the topics (the
    launcher tails only ``stored``).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        kinds: Iterable[str] = ("stored", "failed"),
        refresh_seconds: float = 2.0,
    ) -> None:
        self.settings = settings or get_settings()
        self.topics = {self.settings.topic(kind): kind for kind in kinds}
        self.refresh_seconds = refresh_seconds
        self._consumer: Any = None
        self._assigned: set[Any] = set()
        self._last_refresh = 0.0

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        await self._assign_new(at_end=True)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def missing_topics(self) -> list[str]:
        assigned = {tp.topic for tp in self._assigned}
        return [t for t in self.topics if t not in assigned]

    async def _assign_new(self, at_end: bool) -> None:
        """Assign partitions of our topics that exist now; new ones start at their end
        on the first call (taken before publishing) and at their beginning later."""
        from aiokafka import TopicPartition

        consumer = self._consumer
        self._last_refresh = time.monotonic()
        new = set()
        for topic in self.topics:
            for partition in await fresh_partitions(consumer, topic):
                tp = TopicPartition(topic, partition)
                if tp not in self._assigned:
                    new.add(tp)
        if not new:
            return
        # assign() replaces the assignment and forgets positions: keep ours.
        positions = {tp: await consumer.position(tp) for tp in self._assigned}
        self._assigned |= new
        consumer.assign(sorted(self._assigned))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        if at_end:
            for tp, offset in (await consumer.end_offsets(sorted(new))).items():
                consumer.seek(tp, offset)
        else:
            await consumer.seek_to_beginning(*sorted(new))

    async def read(self, timeout: float = 1.0) -> list[tuple[str, bytes | None]]:
        """New ``(kind, value)`` records; waits up to ``timeout`` for some."""
        if self.missing_topics and time.monotonic() - self._last_refresh >= self.refresh_seconds:
            await self._assign_new(at_end=False)
        if not self._assigned:
            await asyncio.sleep(timeout)  # nothing to read from until a worker creates the topics
            return []
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=1000)
        return [(self.topics[tp.topic], r.value) for tp, records in batches.items() for r in records]


class ResultWatch(ResultReader):
    """Results of chosen images, read from ``imgflow-stored`` / ``imgflow-failed``.

    Call :meth:`start` *before* publishing (it fixes the start position), then
    :meth:`expect` the ids, then :meth:`poll` (or :func:`wait_for_results`).
    Only the ids asked about are kept. The first result per id wins, except
    that a ``stored`` result replaces an earlier failure (a dead letter that a
    retry fixed).
    """

    def __init__(self, settings: Settings | None = None, *, refresh_seconds: float = 2.0) -> None:
        super().__init__(settings, refresh_seconds=refresh_seconds)
        self.expected: set[str] = set()
        self.done: dict[str, Outcome] = {}

    def expect(self, ids: Iterable[str]) -> None:
        self.expected.update(ids)

    def forget(self, ids: Iterable[str]) -> None:
        for image_id in ids:
            self.expected.discard(image_id)
            self.done.pop(image_id, None)

    async def poll(self, timeout: float = 1.0) -> list[Outcome]:
        """New outcomes for expected ids; waits up to ``timeout`` for records."""
        found: list[Outcome] = []
        for kind, value in await self.read(timeout):
            outcome = outcome_of(kind, value)
            if outcome is None or outcome.image_id not in self.expected:
                continue
            previous = self.done.get(outcome.image_id)
            if previous is None or (previous.status == "failed" and outcome.status == "stored"):
                self.done[outcome.image_id] = outcome
                found.append(outcome)
        return found

    @property
    def remaining(self) -> set[str]:
        return self.expected - self.done.keys()


async def wait_for_results(
    watch: ResultWatch,
    ids: list[str],
    timeout: float | None = None,
    on_outcome: Callable[[Outcome], object] | None = None,
) -> Summary:
    """Block until every id has a result or ``timeout`` seconds pass.

    ``watch`` must have been started before ``ids`` were published: its start
    fixes the position results are read from, so none can slip past.
    ``on_outcome`` sees each result as it arrives (a progress bar, a clock).
    """
    started = time.monotonic()
    watch.expect(ids)
    wanted = set(ids)
    deadline = None if timeout is None else started + timeout
    while wanted - watch.done.keys():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        for outcome in await watch.poll(1.0 if left is None else max(0.01, min(1.0, left))):
            if on_outcome is not None:
                on_outcome(outcome)
    outcomes = {i: watch.done[i] for i in ids if i in watch.done}
    return Summary(
        submitted=len(ids),
        outcomes=outcomes,
        seconds=time.monotonic() - started,
        timed_out=len(outcomes) < len(wanted),
    )


async def fresh_partitions(consumer: Any, topic: str) -> set[int]:
    """Partitions of ``topic`` from fresh metadata (empty if the broker does not know it).

    ``consumer.topics()`` fetches metadata but drops it, and ``partitions_for_topic()``
    reads the client's cache, which learns of a topic created after the start only at its
    next refresh (metadata_max_age_ms, 5 minutes). aiokafka has no public call for this.
    """
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())
