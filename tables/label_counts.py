"""Live label counts: windowed Faust tables fed from ``imgflow-stored``.

Stored results are repartitioned by label (``group_by``), so each worker owns
the labels whose partitions it holds, and the changelogs are partitioned by
label. Two tables share those partitions:

- ``label_counts``: label -> images stored in the window;
- ``label_model_counts``: "label<TAB>model:version" -> the same, per model, so a
  replay with a new model version can be told apart;
- ``label_counted``: which (label, model, image) each window has counted, so a
  redelivered result is counted once.

Counting follows the stored event's timestamp (``relative_to_stream``), so a
window holds what was stored during it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import murmur2
from faust.types import EventT, StreamT
from faust.types.tables import WindowWrapperT

from imgflow.app import app, settings
from imgflow.metrics import METRICS
from imgflow.records import MalformedMessage, Stored, parse
from imgflow.topics import stored_topic

log = logging.getLogger(__name__)

SEP = "\t"
MALFORMED = b"\x00malformed"


def windowed_counter(name: str, help: str) -> WindowWrapperT:
    """A windowed int table on the label partitions, windows by the event's timestamp."""

    async def on_changelog_event(event: EventT[Any]) -> None:
        METRICS.changelog_recovered.labels(name).inc()

    table = app.Table(
        name,
        default=int,
        partitions=settings.partitions,
        key_type=str,
        value_type=int,
        help=help,
        on_changelog_event=on_changelog_event,
    )
    if settings.window_step:
        windowed = table.hopping(
            settings.window_seconds, settings.window_step, expires=settings.window_expires
        )
    else:
        windowed = table.tumbling(settings.window_seconds, expires=settings.window_expires)
    windowed = windowed.relative_to_stream()
    windowed.table.on_recover(lambda: schedule_expiry(windowed.table))
    return windowed


label_counts = windowed_counter("label_counts", "Images stored per label per window.")
label_model_counts = windowed_counter(
    "label_model_counts", "Images stored per label and model version per window."
)
#: Which stored results each window has already counted: a redelivered or
#: re-stored result (at-least-once, DESIGN section 8) is not counted twice.
counted = windowed_counter("label_counted", "Stored results already counted, per window.")


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


def label_key(value: bytes) -> bytes:
    """The repartition key: the stored result's label."""
    try:
        return parse(Stored, value).label.encode()
    except MalformedMessage:
        return MALFORMED


def partition_of(label: str, partitions: int = settings.partitions) -> int:
    """The partition that owns ``label`` (Kafka's default murmur2 partitioner)."""
    hashed: int = murmur2(label.encode())  # aiokafka is untyped
    return (hashed & 0x7FFFFFFF) % partitions


@app.agent(stored_topic)
async def count_labels(stream: StreamT[bytes]) -> None:
    # `partitions` is accepted by the concrete Stream, not declared by StreamT.
    async for value in stream.group_by(label_key, name="label", partitions=settings.partitions):  # type: ignore[call-arg]
        try:
            stored = parse(Stored, value)
        except MalformedMessage as exc:
            log.warning("skipping malformed stored event: %s", exc)
            continue
        model_key = f"{stored.label}{SEP}{stored.model}:{stored.model_version}"
        seen_key = f"{model_key}{SEP}{stored.image_id}"
        if counted[seen_key].value():
            METRICS.recounted.inc()
            continue
        counted[seen_key] = 1
        label_counts[stored.label] += 1
        label_model_counts[model_key] += 1
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

    for (label, span), count in list(label_counts.table.data.items()):
        if partitions is None or partition_of(label) in partitions:
            window(tuple(span)).counts[label] = int(count)
    for (key, span), count in list(label_model_counts.table.data.items()):
        label, _, model = key.partition(SEP)
        if partitions is None or partition_of(label) in partitions:
            window(tuple(span)).by_model[model][label] = int(count)
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
