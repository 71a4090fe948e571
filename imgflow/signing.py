"""Signed control records: an HMAC-SHA256 of a record's value, in a header, made with a shared key.

Anyone who may produce to Kafka can write a well-formed record to a control topic, so with
``IMGFLOW_CONTROL_KEY`` set a control record counts only if it carries :data:`HEADER`, the
HMAC of its value with that key (``promote`` signs; workers verify). The same helper serves
every control-plane topic. With no key, every record counts, as before: the worker says so at
start.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

HEADER = "imgflow-signature"

Headers = Iterable[tuple[str, bytes]]


def signature(key: str, value: bytes) -> bytes:
    """The hex HMAC-SHA256 of ``value`` with ``key``."""
    return hmac.new(key.encode(), value, hashlib.sha256).hexdigest().encode()


def sign(key: str | None, value: bytes) -> list[tuple[str, bytes]]:
    """The headers that sign ``value`` (none without a key)."""
    return [] if key is None else [(HEADER, signature(key, value))]


def verified(key: str | None, value: bytes, headers: Headers | None) -> bool:
    """Whether a record may be taken: always without a key; with one, only if it carries one
    signature header and it matches (compared in constant time)."""
    if key is None:
        return True
    found = [v for k, v in headers or () if k == HEADER]
    return len(found) == 1 and hmac.compare_digest(bytes(found[0]), signature(key, value))
