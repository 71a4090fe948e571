"""The open message format and how stages parse what they consume."""

from __future__ import annotations

import json

import pytest

from imgflow.fields import MalformedMessage
from imgflow.records import (
    DecodedImage,
    Failure,
    ImageMeta,
    ImageRef,
    dumps,
    message_id,
    parse,
    parse_image_path,
    parse_tensor,
    tensor_message,
)


def test_minimal_path_message_from_any_client():
    msg = parse_image_path(b'{"path": "/data/a.jpg"}', key=b"img-1", fallback_id="fb")
    assert msg.image_id == "img-1" and msg.path == "/data/a.jpg"
    assert msg.source == "kafka" and msg.submitted_at > 0 and msg.model is None


def test_image_id_falls_back_to_a_stable_message_id():
    fallback = message_id("imgflow-paths", 2, 17)
    assert fallback == message_id("imgflow-paths", 2, 17) != message_id("imgflow-paths", 2, 18)
    msg = parse_image_path(b'{"path": "/a.jpg"}', key=None, fallback_id=fallback)
    assert msg.image_id == fallback


def test_full_path_message_round_trips():
    body = {
        "image_id": "x1",
        "path": "/a.jpg",
        "source": "camera-7",
        "submitted_at": 1700000000.5,
        "model": "/models/v2/model.toml",
        "replay_id": None,
        "attrs": {"site": "north"},
    }
    msg = parse_image_path(json.dumps(body).encode(), key=None, fallback_id="fb")
    assert json.loads(dumps(msg)) == body


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"image_id": "a"}', "path"),
        (b'{"path": null}', "path"),
        (b'{"path": 7}', "path"),
        (b'{"path": "/a", "submitted_at": "yesterday"}', "submitted_at"),
        (b'{"path": "/a", "attrs": []}', "attrs"),
        (None, "empty"),
    ],
)
def test_malformed_path_messages_are_rejected_readably(raw, words):
    with pytest.raises(MalformedMessage, match=words):
        parse_image_path(raw, key=None, fallback_id="fb")


def test_internal_records_parse_with_nested_metadata():
    meta = ImageMeta(file_name="a.jpg", width=3, height=2, format="JPEG", bytes=10, sha256="0" * 64)
    rec = DecodedImage(
        ref=ImageRef(image_id="i", path="/a.jpg", source="s", submitted_at=1.0),
        decoded_at=2.0,
        model="/m.toml",
        shape=[2, 3, 3],
        meta=meta,
    )
    back = parse(DecodedImage, dumps(rec))
    assert back == rec and isinstance(back.meta, ImageMeta)


def test_a_tensor_message_carries_raw_pixels_and_its_record_in_a_header():
    meta = ImageMeta(file_name="a.jpg", width=3, height=2, format="JPEG", bytes=10, sha256="0" * 64)
    ref = ImageRef(image_id="i", path="/a.jpg", source="s", submitted_at=1.0)
    rec = DecodedImage(ref=ref, decoded_at=2.0, model="/m.toml", shape=[2, 3, 3], meta=meta)
    pixels = bytes(range(18))
    value, headers = tensor_message(rec, pixels)
    assert value == pixels  # raw, not base64 in JSON
    record, back, elsewhere = parse_tensor(value, dict(headers))
    assert record == rec and back == pixels and elsewhere is None
    value, headers = tensor_message(rec, pixels, elsewhere=b"mongo")  # a claim check: no pixels
    assert value == b"" and parse_tensor(value, dict(headers)) == (rec, b"", b"mongo")
    with pytest.raises(MalformedMessage, match="imgflow-record"):
        parse_tensor(pixels, {})


def test_internal_record_missing_fields_is_malformed():
    with pytest.raises(MalformedMessage, match="missing required field"):
        parse(Failure, b'{"image_id": "x"}')
