"""Pure parts of the live counts: label ownership and merging owners' windows."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from tables.label_counts import merge, partition_of


def test_label_ownership_matches_kafkas_default_partitioner():
    """group_by sends each label to DefaultPartitioner's partition; /counts/ must agree."""
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
