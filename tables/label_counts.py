"""Live label counts: windowed Faust tables fed from ``imgflow-stored``.

The store stage keys each stored result by its label (agents/store.py), so
``imgflow-stored`` is partitioned by label like the tables' changelogs: each
worker owns the labels whose partitions it holds, and counts them straight from
the topic (no repartition topic). Two tables share those partitions:

- ``label_model_counts``: "label<TAB>model:version" -> images stored in the
  window by that model version (a replay with a new version can be told apart);
  a label's count is the sum over its versions;
- ``label_counted``: which (label, model, image) each window has counted, so a
  redelivered result is counted once.

Each stored image is two changelog records: the embedded broker keeps every
record in memory, about 1 KB each beyond its bytes (docs/design.md §8), so a
table per label on top of the per-version one was dropped.

A result is counted in the window of its *request* (``Stored.submitted_at``, when
its path was published), not of the message that carried it: a redelivered or
re-stored result (a worker killed before it committed) is re-published into
``imgflow-stored`` with a new timestamp, possibly in a later window, where the
window's ``label_counted`` could not know it and the image was counted twice.
Its request time never changes, so every copy lands in the same window. (Live,
request and storage times differ by the chain's latency; a replay is a new
request.)

**Exactly once across crashes.** One stored result touches two keys, and each
write is its own changelog record: a worker killed between them leaves a prefix
of the writes, and its partition is recovered elsewhere with, say, the image
marked counted but its count not incremented (the soak measured 1,999 counted
of 2,000 stored). So every write is idempotent on its own, keyed by the
position of the event that caused it. All keys of one label live on one
partition of ``imgflow-stored``, whose events a worker counts in offset
order: a count's value is ``[count, position of the last event it counted]``
and is incremented only for a later position; ``label_counted`` holds the
position that counted the image. A redelivery of the same event (same
position) completes whatever writes are missing; another stored event for an
image already counted (a re-store upstream) is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import murmur2
from faust.types import EventT, StreamT
from faust.types.tables import WindowWrapperT

from imgflow.app import app, settings
from imgflow.fields import MalformedMessage
from imgflow.metrics import METRICS
from imgflow.records import Stored, parse
from imgflow.topics import stored_topic

log = logging.getLogger(__name__)

SEP = "\t"


def request_time(event: EventT[Any] | None) -> float:
    """The window time of a stored result: its request's ``submitted_at`` (module docstring)."""
    if event is not None:
        try:
            return parse(Stored, event.value).submitted_at or float(event.message.timestamp)
        except MalformedMessage:
            return float(event.message.timestamp)
    return time.time()


def windowed_counter(name: str, help: str, *, pairs: bool = False) -> WindowWrapperT:
    """A windowed table on the label partitions, windows by the event's timestamp.

    Values are ints, or with ``pairs`` ``[count, position]`` lists (see :func:`count_once`).
    """

    async def on_changelog_event(event: EventT[Any]) -> None:
        METRICS.changelog_recovered.labels(name).inc()

    table = app.Table(
        name,
        default=list if pairs else int,
        partitions=settings.partitions,
        key_type=str,
        value_type=None if pairs else int,  # a JSON list; Faust decodes only Records or scalars by type
        help=help,
        on_changelog_event=on_changelog_event,
    )
    if settings.window_step:
        windowed = table.hopping(
            settings.window_seconds, settings.window_step, expires=settings.window_expires
        )
    else:
        windowed = table.tumbling(settings.window_seconds, expires=settings.window_expires)
    # WindowWrapperT (Faust's protocol) omits relative_to; the concrete WindowWrapper has it.
    by_request: WindowWrapperT = windowed.relative_to(request_time)  # type: ignore[attr-defined]
    by_request.table.on_recover(lambda: schedule_expiry(by_request.table))
    return by_request


label_model_counts = windowed_counter(
    "label_model_counts", "Images stored per label and model version per window.", pairs=True
)
#: Which stored results each window has already counted, and at which position: a
#: redelivered or re-stored result (at-least-once, docs/design.md §8) is not counted twice.
counted = windowed_counter("label_counted", "Stored results already counted, per window.")


def count_of(value: Any) -> int:
    """The count in a count table's value (``[count, position]``; a bare int from older state)."""
    if isinstance(value, list | tuple):
        return int(value[0]) if value else 0
    return int(value or 0)


def count_once(value: Any, position: int) -> list[int]:
    """A count's new value after the event at ``position`` (pure; idempotent per position).

    Positions of one partition only grow, so an event at or before the last
    position this count took has been counted already.
    """
    count = count_of(value)
    last = int(value[1]) if isinstance(value, list | tuple) and len(value) > 1 else 0
    return [count + 1, position] if position > last else [count, last]


def should_count(seen: int, position: int) -> bool:
    """Whether the event at ``position`` counts an image the window marked ``seen`` (pure).

    ``seen`` is 0 for an image not counted yet, else the position that counted it:
    the same position is a redelivery that may still owe some writes.
    """
    return not seen or seen == position


async def schedule_expiry(table: Any) -> None:
    """Let windows that were not counted in this process expire too.

    Faust schedules a window key for expiry only when an agent sets it, never when the key
    comes back from the changelog or (with ``rocksdb://``) was already on disk, so after a
    restart those windows would stay forever. After each recovery, every key this worker now
    holds is scheduled again; keys already scheduled are harmless duplicates.
    """
    for n, key in enumerate(list(table.data.keys())):
        label_part, span = key
        window = (label_part, (float(span[0]), float(span[1])))  # RocksDB decodes tuples as lists
        table._maybe_set_key_ttl(window, partition_of(label_part.partition(SEP)[0]))
        if n % 1000 == 999:
            await asyncio.sleep(0)  # keep heart-beating through a large table


def partition_of(label: str, partitions: int = settings.partitions) -> int:
    """The partition that owns ``label`` (Kafka's default murmur2 partitioner)."""
    hashed: int = murmur2(label.encode())  # aiokafka is untyped
    return (hashed & 0x7FFFFFFF) % partitions


@app.agent(stored_topic)
async def count_labels(stream: StreamT[bytes]) -> None:
    # imgflow-stored is keyed by label (agents/store.py): its partitions are the tables'.
    async for event in stream.events():
        try:
            stored = parse(Stored, event.value)
        except MalformedMessage as exc:
            log.warning("skipping malformed stored event: %s", exc)
            continue
        except Exception:  # a parser bug: logged with its traceback, never the end of the agent
            log.exception("skipping a stored event that could not be read")
            continue
        position = event.message.offset + 1  # 1-based: 0 means "not counted"
        model_key = f"{stored.label}{SEP}{stored.model}:{stored.model_version}"
        seen_key = f"{model_key}{SEP}{stored.image_id}"
        if not should_count(int(counted[seen_key].value() or 0), position):
            METRICS.recounted.inc()
            continue
        # Each write below is one changelog record, idempotent by itself (module docstring).
        counted[seen_key] = position
        label_model_counts[model_key].apply(count_once, position)
        METRICS.counted.inc()


@dataclass
class Window:
    start: float
    end: float
    counts: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "total": sum(self.counts.values()),
            "counts": dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_model": {m: dict(sorted(c.items())) for m, c in sorted(self.by_model.items())},
        }


def local_counts(partitions: set[int] | None = None) -> dict[tuple[float, float], Window]:
    """This worker's windows, limited to labels on ``partitions`` (all it holds if None)."""
    windows: dict[tuple[float, float], Window] = {}

    def window(span: tuple[float, float]) -> Window:
        if span not in windows:
            windows[span] = Window(start=span[0], end=span[1])
        return windows[span]

    for (key, span), value in list(label_model_counts.table.data.items()):
        label, _, model = key.partition(SEP)
        if partitions is None or partition_of(label) in partitions:
            w, n = window(tuple(span)), count_of(value)
            w.by_model[model][label] = n
            w.counts[label] = w.counts.get(label, 0) + n
    return windows


def merge(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge window lists from the owners of disjoint label sets (pure)."""
    merged: dict[tuple[float, float], Window] = {}
    for windows in parts:
        for w in windows:
            span = (float(w["start"]), float(w["end"]))
            target = merged.setdefault(span, Window(start=span[0], end=span[1]))
            for label, n in w["counts"].items():
                target.counts[label] = target.counts.get(label, 0) + int(n)
            for model, counts in w["by_model"].items():
                for label, n in counts.items():
                    target.by_model[model][label] = target.by_model[model].get(label, 0) + int(n)
    return [merged[span].as_json() for span in sorted(merged, reverse=True)]
