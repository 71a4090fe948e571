"""Stage 3, store: ``imgflow-predictions`` -> MongoDB -> ``imgflow-stored``.

One unordered bulk upsert per batch, keyed by (image_id, model, version), so a
redelivered batch rewrites the same documents. The batch is acknowledged only
after the write succeeded and the stored events were delivered.
"""

from __future__ import annotations

import logging
from functools import partial

from agents.acks import hold, release
from agents.failures import malformed
from imgflow.app import app, settings
from imgflow.metrics import METRICS
from imgflow.records import MalformedMessage, Prediction, Stored, dumps, parse
from imgflow.storage import Store, retry_forever
from imgflow.topics import failed_topic, predictions_topic, publish_all, stored_topic

log = logging.getLogger(__name__)


def stored_events(preds: list[Prediction], stored_at: float) -> list[tuple[str, bytes]]:
    return [
        (
            p.image_id,
            dumps(
                Stored(
                    image_id=p.image_id,
                    label=p.label,
                    score=p.score,
                    model=p.model,
                    model_version=p.model_version,
                    submitted_at=p.submitted_at,
                    stored_at=stored_at,
                    replay_id=p.replay_id,
                )
            ),
        )
        for p in preds
    ]


@app.agent(predictions_topic)
async def store(stream):
    db = Store(settings.mongo_url, settings.mongo_db)
    await retry_forever("create indexes", db.ensure_indexes)
    async for events in stream.take_events(settings.store_batch_size, settings.batch_wait):
        hold(events)
        preds: list[Prediction] = []
        failures = []
        for event in events:
            try:
                preds.append(parse(Prediction, event.value))
            except MalformedMessage as exc:
                failures.append(malformed("store", exc, event))
        if preds:
            stored_at = await retry_forever("store predictions", partial(db.write_predictions, preds))
            await publish_all(stored_topic, stored_events(preds, stored_at.timestamp()))
        await publish_all(failed_topic, failures)
        release(events)
        METRICS.batch_size.labels("store").observe(len(events))
        if preds:
            METRICS.stored.inc(len(preds))
            for p in preds:
                METRICS.end_to_end.observe(max(0.0, stored_at.timestamp() - p.submitted_at))
