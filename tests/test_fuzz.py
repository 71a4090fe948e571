"""Fuzzing every topic's parser and the decoder with generated hostile input (hypothesis).

The property: a parser either returns a record that every later step can handle (JSON for
the next topic, BSON for MongoDB) or raises :class:`MalformedMessage`, and nothing else; the
decoder returns a tensor or raises :class:`ImageRejected`, and nothing else.

``make test`` runs a short, derandomised version (``IMGFLOW_FUZZ_EXAMPLES``, default 150 per
target, well under a minute in all); ``make fuzz`` runs 10,000 per target and then the same
kinds of messages through a real worker (tests/test_hostile_e2e.py, ``-m fuzz``).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgflow.control import Promotion
from imgflow.fields import MalformedMessage
from imgflow.frames import (
    HEADER_ATTRS,
    HEADER_FILE_NAME,
    HEADER_IMAGE_ID,
    HEADER_MODEL,
    HEADER_REPLAY_ID,
    HEADER_SOURCE,
    HEADER_SUBMITTED_AT,
    parse_frame,
)
from imgflow.imaging import ImageRejected, Limits, MemoryBudget, decode_data
from imgflow.records import (
    RECORD_HEADER,
    Failure,
    Prediction,
    Stored,
    dumps,
    parse,
    parse_image_path,
    parse_tensor,
)

EXAMPLES = int(os.environ.get("IMGFLOW_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 1000,  # the suite's run is the same every time; `make fuzz` explores
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Values a hostile producer would try: odd text, huge and non-finite numbers, deep nesting.
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "\x00", "$set", "a.b", "/dev/zero", "../../etc/passwd", "s3://b/k::memory://x", "é" * 300]
    ),
    st.text(min_size=1000, max_size=6000),
)
hostile_number = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e400, -1e12, 1e12, 2**63, 2**64]),
)
scalar = st.one_of(st.none(), st.booleans(), hostile_number, hostile_text)
json_value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=20,
)

FIELDS = {
    "paths": ["image_id", "path", "source", "submitted_at", "model", "replay_id", "attrs"],
    "predictions": list(Prediction._options.fields),
    "stored": list(Stored._options.fields),
    "failed": list(Failure._options.fields),
}


def records(kind: str) -> st.SearchStrategy[bytes]:
    """JSON objects with the topic's own field names (so parsing gets past the first check)
    holding hostile values, some fields missing, some extra; and plain garbage."""
    fields = st.dictionaries(
        st.sampled_from(FIELDS[kind]) | hostile_text, json_value, max_size=len(FIELDS[kind])
    )
    as_json = fields.map(lambda d: json.dumps(d, allow_nan=True).encode())
    return st.one_of(
        as_json, st.binary(max_size=200), json_value.map(lambda v: json.dumps(v, allow_nan=True).encode())
    )


def usable(record: Any) -> None:
    """What the next steps do with a parsed record: JSON for the next topic, BSON for MongoDB."""
    data = json.loads(dumps(record))
    bson.encode({"doc": data})


@FUZZ
@given(value=records("paths"), key=st.none() | st.binary(max_size=300))
def test_paths_parser_raises_only_malformed_message(value: bytes, key: bytes | None):
    try:
        usable(parse_image_path(value, key, "fallback"))
    except MalformedMessage:
        pass


@FUZZ
@given(
    value=st.binary(max_size=64),
    key=st.none() | st.binary(max_size=300),
    headers=st.dictionaries(
        st.sampled_from(
            [
                *(HEADER_IMAGE_ID, HEADER_SOURCE, HEADER_SUBMITTED_AT, HEADER_FILE_NAME, HEADER_MODEL),
                *(HEADER_REPLAY_ID, HEADER_ATTRS, "other"),
            ]
        ),
        st.one_of(st.binary(max_size=300), json_value.map(lambda v: json.dumps(v, allow_nan=True).encode())),
    ),
)
def test_frames_parser_raises_only_malformed_message(value: bytes, key: bytes | None, headers: dict):
    try:
        usable(parse_frame(value, key, headers, "fallback").record)
    except MalformedMessage:
        pass


@FUZZ
@given(value=st.none() | st.binary(max_size=64), record=records("predictions"), with_header=st.booleans())
def test_tensors_parser_raises_only_malformed_message(value: bytes | None, record: bytes, with_header: bool):
    headers = {RECORD_HEADER: record} if with_header else {}
    try:
        parsed, _, _ = parse_tensor(value, headers)
        usable(parsed)
    except MalformedMessage:
        pass


@pytest.mark.parametrize(
    "kind, record_type", [("predictions", Prediction), ("stored", Stored), ("failed", Failure)]
)
def test_record_parsers_raise_only_malformed_message(kind: str, record_type: type):
    @FUZZ
    @given(value=records(kind))
    def check(value: bytes) -> None:
        try:
            usable(parse(record_type, value))
        except MalformedMessage:
            pass

    check()


@FUZZ
@given(
    value=st.one_of(st.binary(max_size=200), json_value.map(lambda v: json.dumps(v, allow_nan=True).encode()))
)
def test_control_parser_raises_only_malformed_message(value: bytes):
    try:
        Promotion.decode(value)
    except MalformedMessage:
        pass


def _seeds() -> list[bytes]:
    out = []
    for fmt, mode in (
        ("PNG", "RGB"),
        ("PNG", "I;16"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("WEBP", "RGB"),
        ("TIFF", "RGB"),
    ):
        buf = io.BytesIO()
        Image.new(mode, (40, 30)).save(buf, fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seeds()
LIMITS = Limits(
    max_file_bytes=2**20, max_pixels=4_000_000, formats=("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.integers(min_value=0, max_value=10_000),
)
def test_the_decoder_raises_only_image_rejected(seed: bytes, flips: list[tuple[int, int]], cut: int | None):
    data = bytearray(seed)
    for where, byte in flips:
        data[where % len(data)] = byte
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    limits = Limits(LIMITS.max_file_bytes, LIMITS.max_pixels, LIMITS.formats, MemoryBudget(256 * 2**20))
    try:
        decoded = decode_data(bytes(data), "fuzz", (16, 16), "center_crop", limits)
        assert decoded.tensor.shape == (16, 16, 3)
    except ImageRejected:
        pass


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255)), max_size=8),
)
def test_the_upload_sniffer_raises_only_refused(tmp_path_factory, seed: bytes, flips: list[tuple[int, int]]):
    """``POST /images/`` checks each file with Pillow before it is kept (sources/upload.py)."""
    from sources.upload import Refused, sniff

    data = bytearray(seed)
    for where, byte in flips:
        data[where % len(data)] = byte
    path = tmp_path_factory.getbasetemp() / "upload-fuzz.bin"  # one file, rewritten per example
    path.write_bytes(bytes(data))
    try:
        sniff(path, 4_000_000)
    except Refused:
        pass
