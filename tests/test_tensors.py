"""The pixels stored beside tensor messages (imgflow/tensors.py), on the real MongoDB-protocol server."""

from __future__ import annotations

import time

import pytest

from imgflow.tensors import TensorStore, blob_id

pytestmark = pytest.mark.e2e


def test_pixels_go_in_once_come_out_until_done_and_expire_after_the_ttl(scratch_db):
    store = TensorStore(scratch_db, ttl=60)
    a, b, c = (blob_id(i, 1.5) for i in "abc")
    store.put([(a, b"\x01" * 12), (b, b"\x02" * 12)])
    store.put([(a, b"\x09" * 12), (c, b"\x03" * 12)])  # a redelivered decode: the first write stays
    assert store.take([a, b, c, "missing"]) == {a: b"\x01" * 12, b: b"\x02" * 12, c: b"\x03" * 12}
    store.done([a])
    assert store.take([a, b]) == {a: None, b: b"\x02" * 12}  # a tombstone: classified already
    assert "px" not in scratch_db.tensors.find_one({"_id": a})

    # Bounded by design: tombstones and pixels nobody claimed leave after the ttl.
    later = time.time() + 61
    store._pruned_at = 0.0
    assert store.prune(now=later) == 3
    assert store.prune(now=later + 1) == 0  # at most once every PRUNE_EVERY seconds
    store.put([(a, b"\x01")])
    store._pruned_at = 0.0
    assert store.prune(now=time.time() + 30) == 0  # younger than the ttl: kept
    assert store.take([a]) == {a: b"\x01"}
