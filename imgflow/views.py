"""Web views on the Faust web server: health (more arrive with the live-counts issue)."""

from __future__ import annotations

import socket

from faust.web import Request, Response, View

from imgflow.app import app, settings


@app.page("/health/")
class Health(View):
    """Ready when the worker's consumer has partitions and the default model is loaded."""

    async def get(self, request: Request) -> Response:
        from agents.classify import models

        assigned = (
            sorted(f"{tp.topic}[{tp.partition}]" for tp in app.consumer.assignment()) if app.consumer else []
        )
        loaded = [{"name": s.name, "version": s.version} for s in models.loaded]
        ready = bool(loaded) and app.rebalancing is False
        body = {
            "status": "ok" if ready else "starting",
            "worker": f"{socket.gethostname()}:{app.conf.web_port}",
            "url": str(app.conf.canonical_url),
            "models": loaded,
            "assigned": assigned,
            "rebalancing": bool(app.rebalancing),
            "settings": {"broker": settings.broker_url, "mongo_db": settings.mongo_db},
        }
        return self.json(body, status=200 if ready else 503)
