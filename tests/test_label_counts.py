"""Pure parts of the live counts: label ownership and merging owners' windows."""

from __future__ import annotations

import json

from aiokafka.partitioner import DefaultPartitioner

from imgflow.records import ImageRef
from tables.label_counts import count_of, count_once, merge, partition_of, should_count


def test_label_ownership_matches_kafkas_default_partitioner():
    """The store keys stored events by label: DefaultPartitioner's partition; /counts/ must agree."""
    for label in ["espresso", "tabby cat", "Egyptian Mau", "a", "ünïcödé", "x" * 200]:
        assert partition_of(label, 4) == DefaultPartitioner()(label.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
        assert partition_of(label, 7) == DefaultPartitioner()(label.encode(), list(range(7)), [])


def window(start, counts, by_model):
    return {"start": start, "end": start + 9.9, "counts": counts, "by_model": by_model}


def test_merge_sums_disjoint_owners_and_orders_newest_first():
    a = [window(0.0, {"cat": 2}, {"m:1": {"cat": 2}}), window(10.0, {"cat": 1}, {"m:1": {"cat": 1}})]
    b = [window(10.0, {"dog": 3}, {"m:1": {"dog": 1}, "m:2": {"dog": 2}})]
    merged = merge([a, b])
    assert [w["start"] for w in merged] == [10.0, 0.0]
    newest = merged[0]
    assert newest["counts"] == {"dog": 3, "cat": 1} and newest["total"] == 4
    assert list(newest["counts"]) == ["dog", "cat"]  # most counted first
    assert newest["by_model"] == {"m:1": {"cat": 1, "dog": 1}, "m:2": {"dog": 2}}
    assert merged[1]["counts"] == {"cat": 2}
    assert merge([]) == []


class Changelog:
    """Two keys written one record at a time, as the count agent writes them (pure model)."""

    def __init__(self) -> None:
        self.counted: dict[str, int] = {}
        self.by_model: dict[str, list[int]] = {}

    def count(self, image: str, position: int, crash_after: int | None = None) -> None:
        """Process one stored event; ``crash_after`` writes stops early, as a kill -9 would."""
        if not should_count(self.counted.get(image, 0), position):
            return
        writes = [
            lambda: self.counted.__setitem__(image, position),
            lambda: self.by_model.__setitem__("cat", count_once(self.by_model.get("cat", []), position)),
        ]
        for write in writes[:crash_after]:
            write()


def test_a_redelivery_after_a_crash_between_writes_completes_the_count():
    """The soak's 1,999 of 2,000: 'counted' recovered without its count, redelivery skipped."""
    log = Changelog()
    log.count("a", position=1)
    log.count("b", position=2, crash_after=1)  # killed mid-way
    log.count("b", position=2)  # the uncommitted event comes back
    assert count_of(log.by_model["cat"]) == 2


def test_a_second_stored_event_for_a_counted_image_is_not_counted():
    log = Changelog()
    log.count("a", position=1)
    log.count("a", position=1)  # redelivered after everything was written
    log.count("a", position=7)  # the same image re-stored upstream: another event
    assert count_of(log.by_model["cat"]) == 1


def test_counts_read_old_ints_and_new_pairs():
    assert count_of(3) == 3 and count_of([3, 9]) == 3 and count_of([]) == 0
    assert (
        count_once([3, 9], 9) == [3, 9] and count_once([3, 9], 10) == [4, 10] and count_once([], 1) == [1, 1]
    )


def test_every_copy_of_a_stored_result_falls_in_its_requests_window():
    """A result re-published after a crash carries a new message timestamp; its window must not move."""
    from types import SimpleNamespace

    from imgflow.records import Stored, dumps
    from tables.label_counts import request_time

    ref = ImageRef(image_id="i", submitted_at=1000.5, path="/test.jpg", source="test")
    stored = Stored(ref=ref, label="tabby", score=0.9, model="m", model_version="1", stored_at=1000.6)
    restored = Stored(**{**stored.asdict(), "stored_at": 1090.0})  # stored again, much later
    for record, message_ts in ((stored, 1000.7), (restored, 1090.1)):
        event = SimpleNamespace(value=dumps(record), message=SimpleNamespace(timestamp=message_ts))
        assert request_time(event) == 1000.5  # type: ignore[arg-type]
    malformed = SimpleNamespace(value=b"{", message=SimpleNamespace(timestamp=1234.0))
    assert request_time(malformed) == 1234.0  # type: ignore[arg-type]


def test_counts_carried_to_a_fresh_broker_keep_counting_and_never_recount():
    """A roll-over (devstack/launcher.py) carries the tables to a broker whose offsets start at 0."""
    from devstack.rebase import rebase

    counts_topic, counted_topic = "imgflow-label_model_counts-changelog", "imgflow-label_counted-changelog"
    # Before: 7 counted, the last at position 12,000 of the old broker's imgflow-stored.
    carried = json.loads(rebase(counts_topic, json.dumps([7, 12_000]).encode()) or b"null")
    assert carried == [7, 0]
    assert count_once(carried, 1) == [8, 1]  # the new broker's first event counts
    assert count_once([7, 12_000], 1) == [7, 12_000]  # (what an unrebased count would do: nothing)
    assert rebase(counts_topic, b"3") == b"[3, 0]"  # a bare int from older state
    # An image counted on the old broker stays counted, whatever position its copy has now.
    seen = json.loads(rebase(counted_topic, b"12000") or b"null")
    assert not any(should_count(seen, position) for position in (1, 2, 12_000, 99_999))
    assert should_count(0, 1)  # (an image never counted is)
    assert rebase("imgflow-other-changelog", b'{"x": 1}') == b'{"x": 1}'
