"""Failure records stay small whatever they describe (no Kafka).

A failure record is what goes out when an output was too large to send, so it
must fit under the smallest allowed ``IMGFLOW_MAX_MESSAGE_BYTES`` even when its
input carried huge text.
"""

from __future__ import annotations

import json

import pytest

from imgflow.failures import failure_for
from imgflow.fields import MalformedMessage
from imgflow.records import ImagePath, parse_image_path
from imgflow.settings import Settings

SMALLEST_LIMIT = 128 * 1024


def test_a_failure_about_huge_text_still_fits_the_smallest_message_limit():
    huge = "\U0001f4f7" * 200_000  # non-ASCII: JSON escapes each as 12 bytes
    item = ImagePath(image_id="x" * 256, path="/data/" + huge, source=huge, submitted_at=1.0, replay_id=huge)
    key, value = failure_for("decode", item, ValueError(huge))
    assert len(key.encode()) + len(value) < SMALLEST_LIMIT / 2
    record = json.loads(value)
    assert record["ref"]["path"].startswith("/data/\U0001f4f7") and "characters)" in record["ref"]["path"]
    assert record["message"].startswith("ValueError: ")


def test_an_image_id_too_long_to_report_is_a_malformed_message():
    raw = json.dumps({"image_id": "x" * 257, "path": "/data/cat.jpg"}).encode()
    with pytest.raises(MalformedMessage, match="image_id is 257 characters"):
        parse_image_path(raw, None, "fallback")
    assert parse_image_path(raw.replace(b"x" * 257, b"x" * 256), None, "fallback").image_id == "x" * 256


def test_the_message_limit_may_be_lowered_to_the_smallest_that_failure_records_respect():
    assert Settings(IMGFLOW_MAX_MESSAGE_BYTES=str(SMALLEST_LIMIT)).max_message_bytes == SMALLEST_LIMIT
    with pytest.raises(ValueError):
        Settings(IMGFLOW_MAX_MESSAGE_BYTES=str(SMALLEST_LIMIT - 1))
