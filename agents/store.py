"""Stage 3, store: ``imgflow-predictions`` -> MongoDB -> ``imgflow-stored``.

One unordered bulk upsert per batch, keyed by (image_id, model, version), so a
redelivered batch rewrites the same documents. The batch is acknowledged only
after the write succeeded and the stored events were delivered.
"""

from __future__ import annotations

import logging
from functools import partial

from faust.types import StreamT, TopicT

from agents.stage import Outcome, Stage
from imgflow.app import app, settings
from imgflow.metrics import METRICS
from imgflow.records import Prediction, Stored, dumps, parse
from imgflow.retry import retry
from imgflow.storage import Store
from imgflow.topics import failed_topic, predictions_topic, stored_topic

log = logging.getLogger(__name__)


def stored_events(preds: list[Prediction], stored_at: float) -> list[tuple[str, bytes]]:
    """Stored events keyed by label: ``imgflow-stored`` is partitioned as the label tables are,
    so the counting agent reads it directly (no repartition topic: one record and one hop less
    per image)."""
    return [
        (
            p.label,
            dumps(
                Stored(
                    ref=p.ref,
                    label=p.label,
                    score=p.score,
                    model=p.model,
                    model_version=p.model_version,
                    stored_at=stored_at,
                )
            ),
        )
        for p in preds
    ]


async def store_predictions(store: Store, preds: list[Prediction]) -> Outcome:
    """One bulk upsert per collection, retried until MongoDB takes it; then the stored events."""
    await store.ready()
    stored_at = await retry("store predictions", partial(store.write_predictions, preds))
    METRICS.stored.inc(len(preds))
    for p in preds:
        METRICS.end_to_end.observe(max(0.0, stored_at.timestamp() - p.submitted_at))
    return Outcome(
        outputs=[
            (p, key, value)
            for p, (key, value) in zip(preds, stored_events(preds, stored_at.timestamp()), strict=True)
        ]
    )


def stage(store: Store, output: TopicT = stored_topic, failures: TopicT = failed_topic) -> Stage[Prediction]:
    return Stage(
        "store",
        parse=lambda event: parse(Prediction, event.value),
        process=partial(store_predictions, store),
        output=output,
        failures=failures,
        batch_size=settings.store_batch_size,
    )


@app.agent(predictions_topic)
async def store(stream: StreamT[bytes]) -> None:
    await stage(app.resources.store).run(stream)
