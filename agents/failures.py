"""Dead letters: ``imgflow-failed`` -> MongoDB ``failures``.

Every stage turns what it cannot process into one failure record
(imgflow/failures.py); this stage stores them idempotently, one document per
image. A malformed dead letter is itself stored as one, not published again.
"""

from __future__ import annotations

from functools import partial

from faust.types import StreamT

from agents.stage import Outcome, Stage
from imgflow.app import app, settings
from imgflow.failures import KINDS, STAGES, malformed_failure, metric_label
from imgflow.metrics import METRICS
from imgflow.records import Failure, parse
from imgflow.retry import retry
from imgflow.storage import Store
from imgflow.topics import failed_topic


async def store_failures(store: Store, failures: list[Failure]) -> Outcome:
    await store.ready()
    await retry("store failures", partial(store.write_failures, failures))
    for f in failures:
        METRICS.failed.labels(metric_label(f.stage, STAGES), metric_label(f.kind, KINDS)).inc()
    return Outcome()


def stage(store: Store) -> Stage[Failure]:
    return Stage(
        "failures",
        parse=lambda event: parse(Failure, event.value),
        process=partial(store_failures, store),
        batch_size=settings.store_batch_size,
        keep_malformed=lambda exc, event: malformed_failure("failures", exc, event),
    )


@app.agent(failed_topic)
async def record_failures(stream: StreamT[bytes]) -> None:
    await stage(app.resources.store).run(stream)
