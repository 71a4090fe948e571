"""Signed control records (imgflow/signing.py): with IMGFLOW_CONTROL_KEY, a worker takes only a
promotion signed with it; promote signs. Without a key, every record counts, as before."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgflow.control import KEY, ActiveModel, Promotion, control_topic
from imgflow.metrics import METRICS
from imgflow.settings import Settings
from imgflow.signing import HEADER, sign, signature, verified
from lifecycle.promote import publish, read_current
from models.registry import ModelCache, ModelRegistry
from tests.support import produce_raw

SECRET = "k" * 32


def test_only_a_record_signed_with_the_key_is_verified() -> None:
    value = b'{"spec": "", "model": "m:1", "promoted_at": 1, "by": "x"}'
    assert verified(None, value, [])  # no key: as before
    assert verified(SECRET, value, sign(SECRET, value))
    assert not verified(SECRET, value, [])
    assert not verified(SECRET, value, sign("x" * 32, value))
    assert not verified(SECRET, value + b" ", sign(SECRET, value))
    assert not verified(SECRET, value, [*sign(SECRET, value), (HEADER, signature(SECRET, value))])


def test_a_short_key_is_refused_and_an_empty_one_is_unset() -> None:
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(IMGFLOW_CONTROL_KEY="short")
    assert Settings(IMGFLOW_CONTROL_KEY="").control_key is None


def active(tmp_path: Path, key: str | None) -> ActiveModel:
    settings = Settings(IMGFLOW_HOME=str(tmp_path), IMGFLOW_CONTROL_KEY=key or "")
    return ActiveModel(settings, ModelCache(ThreadPoolExecutor(1)), ModelRegistry([tmp_path]))


def test_a_worker_with_a_key_refuses_and_counts_an_unsigned_promotion(tmp_path: Path) -> None:
    record = Promotion("", "evil:1", time.time(), "mallory")
    refused = METRICS.promotions.labels("refused")._value.get()
    assert active(tmp_path, SECRET).take(7, record.encode(), []) is None
    assert METRICS.promotions.labels("refused")._value.get() == refused + 1
    assert active(tmp_path, SECRET).take(8, record.encode(), sign(SECRET, record.encode())) == record
    assert active(tmp_path, None).take(9, record.encode(), []) == record  # no key: as before


@pytest.mark.e2e
async def test_promote_signs_and_a_forged_record_on_the_topic_does_not_count(broker_url: str) -> None:
    prefix = f"sign{uuid.uuid4().hex[:6]}"
    keyed = Settings(BROKER_URL=broker_url, IMGFLOW_TOPIC_PREFIX=prefix, IMGFLOW_CONTROL_KEY=SECRET)
    open_ = Settings(BROKER_URL=broker_url, IMGFLOW_TOPIC_PREFIX=prefix)
    signed = Promotion("", "good:1", time.time(), "alice")
    await publish(keyed, signed)
    forged = Promotion("", "evil:1", time.time(), "mallory")
    await produce_raw(keyed.bootstrap_servers[0], control_topic(keyed), [(KEY, forged.encode())])
    assert await read_current(keyed) == signed  # the forged record, though newer, is refused
    assert await read_current(open_) == forged  # without a key every record counts
