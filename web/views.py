"""Web views on each worker's Faust web server.

- ``GET /health/``: worker id, assigned partitions, models loaded, lag (total, per partition,
  oldest unprocessed age); 503 until ready.
- ``GET /counts/``: live label counts for the whole cluster, from any worker.
- ``GET /counts/local/?partitions=0,1``: this worker's share (used by /counts/).
- ``GET /workers/``: every worker of the cluster (the dashboard's status line asks each one).
- ``GET /metrics``: Prometheus text.
- ``GET /images/{image_id}``: the stored result from MongoDB.

Who may call them: imgflow/auth.py (``IMGFLOW_API_TOKEN``, ``IMGFLOW_API_PROTECT_READS``).

``/counts/`` fans out: it reads the partition assignment every member shares
through Faust's assignor (url -> changelog partitions of the label tables),
answers its own partitions in process and asks each other owner, in parallel,
only for the partitions it owns. The parts are disjoint by construction, so
merging is a sum. A missing owner makes the answer ``complete: false`` with
the partitions it lacks rather than a silent undercount.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import aiohttp
from faust.web import Request, Response, View

from imgflow.app import app, settings
from imgflow.metrics import METRICS

log = logging.getLogger(__name__)


def _norm(url: Any) -> str:
    return str(url).rstrip("/")


def owners() -> dict[str, set[int]]:
    """url -> partitions of the label tables it actively owns (from the assignor)."""
    from tables.label_counts import label_model_counts

    table = label_model_counts.table
    topic = table.changelog_topic.get_topic_name()
    result: dict[str, set[int]] = {}
    for url, topics in app.router.table_metadata(table.name).items():
        parts = set(topics.get(topic, ()))
        if parts:
            result[_norm(url)] = parts
    return result


def members() -> list[str]:
    """Every worker of the cluster: the URL each member of the consumer group advertises.

    The group leader's assignor hands every member the whole distribution of partitions keyed by
    member URL, members that got no partition included (faust/assignor/partition_assignor.py:
    ``_get_changelog_distribution`` runs over every member's assignment), so any worker knows them
    all as of the last rebalance. This worker is one of them even before it has joined.
    """
    router = app.router
    urls = {*router.tables_metadata(), *router.external_topics_metadata(), app.conf.canonical_url}
    return sorted({_norm(url) for url in urls})


def _partitions_arg(request: Request) -> set[int] | None:
    raw = request.query.get("partitions")
    if raw is None:
        return None
    return {int(p) for p in raw.split(",") if p.strip()}


def _window_limit(request: Request) -> int:
    try:
        return max(1, min(1000, int(request.query.get("windows", 10))))
    except ValueError:
        return 10


@app.page("/counts/local/")
class LocalCounts(View):
    """This worker's windows for the requested partitions."""

    async def get(self, request: Request) -> Response:
        from tables.label_counts import local_counts

        try:
            partitions = _partitions_arg(request)
        except ValueError:
            return self.json({"error": "partitions must be a comma list of integers"}, status=400)
        windows = local_counts(partitions)
        return self.json(
            {
                "worker": _norm(app.conf.canonical_url),
                "partitions": sorted(partitions) if partitions is not None else None,
                "windows": [w.as_json() for w in windows.values()],
            }
        )


@app.page("/counts/")
class ClusterCounts(View):
    """Counts for the current window and the last N windows, for the whole cluster."""

    async def get(self, request: Request) -> Response:
        from tables.label_counts import local_counts, merge

        limit = _window_limit(request)
        me = _norm(app.conf.canonical_url)
        shares = owners()
        all_partitions = set(range(settings.partitions))
        parts: list[list[dict[str, Any]]] = []
        answered: set[int] = set()
        errors: dict[str, str] = {}

        async def ask(url: str, partitions: set[int]) -> None:
            query = ",".join(map(str, sorted(partitions)))
            try:
                async with app.resources.http.get(
                    f"{url}/counts/local/", params={"partitions": query}, allow_redirects=False
                ) as resp:
                    if resp.status != 200:  # an error, or a redirect not followed: the token stays here
                        raise aiohttp.ClientError(f"answered {resp.status}")
                    body = await resp.json()
                parts.append(body["windows"])
                answered.update(partitions)
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                errors[url] = f"{type(exc).__name__}: {exc}"

        if me in shares:
            parts.append([w.as_json() for w in local_counts(shares[me]).values()])
            answered.update(shares[me])
        await asyncio.gather(*(ask(url, ps) for url, ps in shares.items() if url != me))

        now = time.time()
        windows = [w for w in merge(parts) if w["end"] > now - settings.window_expires]
        current = next((w for w in windows if w["start"] <= now < w["end"] + 0.1), None)
        missing = sorted(all_partitions - answered)
        return self.json(
            {
                "complete": not missing,
                "missing_partitions": missing,
                "errors": errors,
                "owners": {url: sorted(ps) for url, ps in sorted(shares.items())},
                "answered_by": me,
                "window": {
                    "seconds": settings.window_seconds,
                    "step": settings.window_step,
                    "expires": settings.window_expires,
                },
                "now": now,
                "current": current or {"start": None, "end": None, "total": 0, "counts": {}, "by_model": {}},
                "windows": windows[:limit],
            }
        )


@app.page("/workers/")
class Workers(View):
    """The cluster's workers, from any of them: a load-balanced address (a Compose service, a
    Kubernetes Service) reaches one replica per request, so a client cannot list them itself."""

    async def get(self, request: Request) -> Response:
        return self.json({"answered_by": _norm(app.conf.canonical_url), "members": members()})


_joined = {"done": False}


@app.on_rebalance_complete.connect  # type: ignore[arg-type]  # mode's signal typing wants `signal=`
async def _on_rebalance_complete(sender: Any, **kwargs: Any) -> None:
    _joined["done"] = True


#: The chain's topics a worker consumes: the ones whose lag it reports.
CHAIN_INPUTS = ("paths", "frames", "tensors", "predictions", "stored", "failed")


async def current_lags() -> list:
    """Lag and oldest unprocessed age of every chain partition this worker owns (imgflow/lag.py)."""
    from imgflow.lag import partition_lags

    owned = partition_lags(app.consumer, [settings.topic(kind) for kind in CHAIN_INPUTS])
    return await app.resources.age_probe.ages(owned)


def _model_key(spec_path: Any) -> str | None:
    spec = app.resources.registry.lookup(str(spec_path))  # from memory: never blocks the loop
    return spec.key if spec is not None else None


@app.page("/health/")
class Health(View):
    """Ready when the worker has joined its group, knows its default model and has loaded it."""

    async def get(self, request: Request) -> Response:
        models = app.resources.models
        try:
            assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment())
        except Exception:  # consumer not started yet
            assigned = []
        loaded = [{"name": s.name, "version": s.version, "spec": str(s.spec_path)} for s in models.loaded]
        rebalancing = bool(app.rebalancing)
        # A worker with no partitions (more workers than partitions) is still ready.
        active = app.resources.active
        ready = bool(loaded) and not rebalancing and _joined["done"] and active.caught_up
        from imgflow.lag import summary

        try:
            lagging = summary(await current_lags())
        except Exception:  # consumer not started yet
            lagging = {"lag": None, "lag_by_partition": {}, "oldest_unprocessed_s": None}
        from imgflow.faust_fixes.liveness import STALLED

        stalled = sorted(f"{tp.topic}[{tp.partition}]" for tp in STALLED)
        from imgflow.retry import OUTAGES

        # A write retried for longer than IMGFLOW_DEGRADED_AFTER (MongoDB or the broker away):
        # nothing is lost, but nothing moves either.
        outage = OUTAGES.longest()
        retrying = (
            {"what": outage[0], "seconds": round(outage[1], 1)}
            if outage is not None and outage[1] >= settings.degraded_after
            else None
        )
        status = "degraded" if ready and (stalled or retrying) else "ok" if ready else "starting"
        from imgflow import __version__

        body = {
            "status": status,
            "version": __version__,
            "worker": f"{socket.gethostname()}:{app.conf.web_port}",
            "url": _norm(app.conf.canonical_url),
            "models": loaded,
            # The default for new images (imgflow/control.py): promoted, or IMGFLOW_MODEL.
            "active_model": {
                "spec": str(active.spec_path),
                "model": _model_key(active.spec_path),
                "refused": active.refused.model if active.refused else None,
                "promoted_at": active.promotion.promoted_at if active.promotion else None,
                "switched_at": active.switched_at,
                "known": active.caught_up,
            },
            "assigned": assigned,
            "rebalancing": rebalancing,
            # The group's lag on this worker's partitions of the chain (imgflow/lag.py).
            **lagging,
            "stalled": stalled,
            "retrying": retrying,
        }
        return self.json(body, status=200 if status == "ok" else 503)


@app.page("/debug/consumer")
class ConsumerState(View):
    """Flow-control state of this worker's consumer, for diagnosing a stalled partition."""

    async def get(self, request: Request) -> Response:
        c: Any = app.consumer  # its flow-control state is not in ConsumerT

        def tps(items: Any) -> list[str]:
            return sorted(f"{tp.topic}[{tp.partition}]" for tp in items)

        return self.json(
            {
                "flow_active": bool(getattr(c, "flow_active", True)),
                "paused": tps(getattr(c, "_paused_partitions", ())),
                "buffered": tps(getattr(c, "_buffered_partitions", ())),
                "active": tps(c._get_active_partitions()) if hasattr(c, "_get_active_partitions") else [],
                "read_offsets": {f"{tp.topic}[{tp.partition}]": o for tp, o in c._read_offset.items()},
                "committed": {f"{tp.topic}[{tp.partition}]": o for tp, o in c._committed_offset.items()},
                "unacked": len(getattr(c, "_unacked_messages", ())),
                "acked_pending": {
                    f"{tp.topic}[{tp.partition}]": sorted(v)[:5] for tp, v in c._acked.items() if v
                },
                "streams_flow_active": bool(app.flow_control.is_active()),
                "producer_buffer": app.producer.buffer.size,
                "client": _client_state(c),
            }
        )


def _client_state(consumer: Any) -> dict[str, Any]:
    """aiokafka's own view: fetch position, pause and reset state per partition."""
    try:
        client = consumer._thread._ensure_consumer()
        assignment = client._subscription.subscription.assignment
    except Exception as exc:  # no assignment yet, or another driver
        return {"error": repr(exc)}
    state = {}
    for tp in assignment.tps:
        tps = assignment.state_value(tp)
        state[f"{tp.topic}[{tp.partition}]"] = {
            "position": tps._position,
            "paused": tps.paused,
            "awaiting_reset": tps.awaiting_reset,
        }
    return state


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        from imgflow.lag import export

        try:
            export(METRICS, await current_lags())
        except Exception as exc:  # consumer not started yet: the other series still serve
            log.debug("no lag figures: %s", exc)
        return self.bytes(METRICS.render(), content_type="text/plain; version=0.0.4")


def _jsonable(doc: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in doc.items():
        if hasattr(value, "isoformat"):
            out[key] = value.isoformat()
        elif isinstance(value, dict):
            out[key] = _jsonable(value)
        else:
            out[key] = value
    return out


@app.page("/images/{image_id}")
class ImageResult(View):
    """The stored result of one image: latest prediction, every model's, any failure."""

    async def get(self, request: Request, image_id: str) -> Response:
        db = app.resources.store.db
        image = await db.images.find_one({"_id": image_id})
        failure = await db.failures.find_one({"_id": image_id})
        if image is None and failure is None:
            return self.json({"error": f"unknown image_id {image_id!r}"}, status=404)
        predictions = [
            _jsonable(p) async for p in db.predictions.find({"image_id": image_id}).sort("predicted_at", 1)
        ]
        return self.json(
            {
                "image_id": image_id,
                "status": "stored" if image else "failed",
                "image": _jsonable(image) if image else None,
                "predictions": predictions,
                "failure": _jsonable(failure) if failure else None,
            }
        )
