"""The one retry helper: transient errors are waited out, permanent ones are raised at once.

Two kinds of error reach a stage (docs/untrusted-input.md):

- **Transient**: the service is away or busy (a connection refused or reset, a timeout, a
  primary stepping down, a broker without a leader). Retrying later succeeds, so
  :func:`retry` retries with exponential backoff, however long it takes, and the caller's
  offsets do not move meanwhile: an outage delays results, it never loses them. While a
  retry has been going on for longer than ``IMGFLOW_DEGRADED_AFTER``, ``/health/`` says
  ``degraded`` (:data:`OUTAGES`).
- **Permanent**: retrying would fail the same way (a document over 16 MB, a value BSON
  cannot encode, nesting over MongoDB's limit). :func:`retry` raises it at once; the stage
  (agents/stage.py) dead-letters the one item that caused it and the rest of its batch
  goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: MongoDB server error codes that mean "try again" (not a fault of the document): shutdown,
#: elections, network, time limits, write conflicts, a full disk an operator will fix.
TRANSIENT_CODES = frozenset(
    {6, 7, 50, 89, 91, 112, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 14031, 251}
)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` later may succeed (see the module docstring)."""
    from aiokafka.errors import KafkaError
    from pymongo.errors import (
        AutoReconnect,
        BulkWriteError,
        ConnectionFailure,
        ExecutionTimeout,
        OperationFailure,
        PyMongoError,
        WTimeoutError,
    )

    if isinstance(exc, AutoReconnect | ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return True
    if isinstance(exc, BulkWriteError):
        errors = (exc.details or {}).get("writeErrors") or []
        concern = (exc.details or {}).get("writeConcernErrors") or []
        return bool(errors or concern) and all(e.get("code") in TRANSIENT_CODES for e in errors)
    if isinstance(exc, OperationFailure):
        return exc.code in TRANSIENT_CODES or exc.has_error_label("RetryableWriteError")
    if isinstance(exc, PyMongoError):
        # Client-side errors (DocumentTooLarge, InvalidOperation, ...) do not go away.
        return exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError")
    if isinstance(exc, KafkaError):
        # A broker away, a leader moving, an ACL an operator will fix: nothing in the message
        # itself (a message too large is handled before this, imgflow/topics.py).
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


class Outages:
    """Retries in progress, by what is being retried and since when (for ``/health/``)."""

    def __init__(self) -> None:
        self._since: dict[int, tuple[str, float]] = {}

    def begin(self, token: int, what: str) -> None:
        self._since.setdefault(token, (what, time.monotonic()))

    def end(self, token: int) -> None:
        self._since.pop(token, None)

    def longest(self) -> tuple[str, float] | None:
        """(what, seconds) of the oldest retry still going on, or None."""
        if not self._since:
            return None
        what, since = min(self._since.values(), key=lambda entry: entry[1])
        return what, time.monotonic() - since


OUTAGES = Outages()
_tokens = itertools.count()


async def retry(
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool] = is_transient,
    first_delay: float = 0.2,
    max_delay: float = 5.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """``await call()`` until it succeeds, retrying transient errors with exponential backoff
    (logged, counted in :data:`OUTAGES`); a permanent error is raised at once."""
    delay = first_delay
    attempt = 1
    token = next(_tokens)
    try:
        while True:
            try:
                return await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not transient(exc):
                    raise
                OUTAGES.begin(token, what)
                log.warning("%s failed (attempt %d), retrying in %.1fs: %s", what, attempt, delay, exc)
                await sleep(delay)
                delay = min(delay * 2, max_delay)
                attempt += 1
    finally:
        OUTAGES.end(token)
