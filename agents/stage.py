"""The one loop every stage runs: take a batch, parse, process, publish, acknowledge.

A stage is only its own logic: how to parse one input message and what to do
with a batch of parsed inputs (:class:`Stage`). Everything else is the same for
all of them and lives here, once:

1. take up to ``batch_size`` events, waiting at most ``IMGFLOW_BATCH_WAIT``;
2. hold their acknowledgements (a batch that fails or is cancelled halfway is
   never committed past: ``Stream.take_events`` acks in a ``finally``);
3. parse each message; a malformed one becomes a failure record (or, for the
   failures stage itself, an item to store);
4. process the parsed batch;
5. publish the outputs and wait for the broker (an output over the size limit
   fails its image as ``message_too_large``), then the failure records, then run
   the batch's ``then`` (what may only happen once they are safe);
6. release the acknowledgements, so the offsets may be committed;
7. count the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from faust.types import EventT, TopicT

from imgflow.app import settings
from imgflow.failures import failure_for, malformed
from imgflow.fields import MalformedMessage
from imgflow.metrics import METRICS
from imgflow.retry import is_transient, retry
from imgflow.topics import failed_topic, publish, publish_all

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Outcome:
    """What a stage made of one batch.

    ``outputs``: ``(item, key, value)`` or ``(item, key, value, headers)`` for the
    stage's output topic, the item being the input it came from (for a failure
    record if it cannot be sent); ``failed``: inputs that cannot go on, with why.
    """

    outputs: list[tuple[Any, str, bytes] | tuple[Any, str, bytes, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )
    failed: list[tuple[Any, BaseException]] = field(default_factory=list)
    #: Run once the outputs and failure records are acknowledged by the broker, before the
    #: offsets are released (the classify stage marks claimed pixels done here).
    then: Callable[[], Awaitable[None]] | None = None


def hold(events: Sequence[EventT[bytes]]) -> None:
    """One extra reference per message: the ``finally`` ack of ``take_events`` only drops it."""
    for event in events:
        event.message.incref()


def release(events: Sequence[EventT[bytes]]) -> None:
    """The batch succeeded: its offsets may be committed once ``take_events`` lets go."""
    for event in events:
        event.ack()


@dataclass
class Stage(Generic[T]):
    """One stage of the chain: its name, how to parse, what to do with a batch."""

    name: str
    parse: Callable[[EventT[bytes]], T]
    process: Callable[[list[T]], Awaitable[Outcome]]
    output: TopicT | None = None
    batch_size: int = 32
    #: Where failure records go (an in-memory channel in the in-process tests).
    failures: TopicT = field(default_factory=lambda: failed_topic)
    #: Turns a malformed message into an item to process instead of a failure record
    #: (the failures stage stores it: publishing it would loop back to itself).
    keep_malformed: Callable[[BaseException, EventT[bytes]], T] | None = None

    async def run(self, stream: Any) -> None:
        async for events in stream.take_events(self.batch_size, settings.batch_wait):
            await self.handle(events)

    def _parse(self, event: EventT[bytes]) -> T:
        """One message parsed; a parser's bug is reported as the message's failure, with its
        traceback in the log, never raised out of the agent."""
        try:
            return self.parse(event)
        except MalformedMessage:
            raise
        except Exception as exc:
            log.exception("%s: parsing a message raised (a bug): treated as malformed", self.name)
            raise MalformedMessage(f"{type(exc).__name__} while parsing: {str(exc)[:200]}") from None

    async def _process(self, items: list[T]) -> Outcome:
        """``process``, with no exception escaping: transient errors are retried inside it
        (imgflow/retry.py), so what reaches here is permanent. A batch that raises is done
        again one item at a time, so that only the item that causes it is dead-lettered
        (writes are idempotent: what the batch wrote before it failed is written again the
        same way) and the rest of the batch goes on."""
        try:
            return await self.process(items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(items) == 1:
                log.warning("%s: an item failed: %s: %s", self.name, type(exc).__name__, str(exc)[:300])
                return Outcome(failed=[(items[0], exc)])
            log.warning(
                "%s: a batch of %d failed (%s: %s); again one by one",
                self.name,
                len(items),
                type(exc).__name__,
                str(exc)[:300],
            )
        outcome = Outcome()
        thens: list[Callable[[], Awaitable[None]]] = []
        for item in items:
            one = await self._process([item])
            outcome.outputs += one.outputs
            outcome.failed += one.failed
            if one.then is not None:
                thens.append(one.then)
        if thens:

            async def then_all() -> None:
                for then in thens:
                    await then()

            outcome.then = then_all
        return outcome

    async def _deliver(self, outcome: Outcome, failures: list[tuple[str, bytes]]) -> None:
        if self.output is not None and outcome.outputs:
            refused = await publish(self.output, [output[1:] for output in outcome.outputs])
            failures = failures + [
                failure_for(self.name, outcome.outputs[i][0], exc) for i, exc in refused.items()
            ]
        if failures:
            if self.keep_malformed is not None:  # the failures stage: a dead letter of a dead letter
                for key, _ in failures:
                    log.error("%s: a dead letter could not be stored and is dropped: %s", self.name, key)
                    METRICS.dropped.labels(self.name).inc()
            else:
                await publish_all(self.failures, failures)
        if outcome.then is not None:
            await outcome.then()

    async def handle(self, events: Sequence[EventT[bytes]]) -> None:
        hold(events)
        items: list[T] = []
        failures: list[tuple[str, bytes]] = []
        for event in events:
            try:
                items.append(self._parse(event))
            except MalformedMessage as exc:
                if self.keep_malformed is not None:
                    items.append(self.keep_malformed(exc, event))
                else:
                    failures.append(malformed(self.name, exc, event))
        outcome = await self._process(items) if items else Outcome()
        failures += [failure_for(self.name, item, exc) for item, exc in outcome.failed]
        # Delivery waits out a broker outage (outputs are keyed: a repeat is a redelivery),
        # and the offsets are released only after it.
        await retry(f"{self.name}: publish", partial(self._deliver, outcome, failures), transient=_always)
        release(events)
        METRICS.batch_size.labels(self.name).observe(len(events))


def _always(exc: BaseException) -> bool:
    """Delivery is retried whatever the error: giving up would lose the batch, and what is in
    it was checked already. A bug here logs its traceback and shows in ``/health/``."""
    if not is_transient(exc):
        log.error(
            "delivery failed with %s (not a broker outage?); retrying", type(exc).__name__, exc_info=exc
        )
    return True
