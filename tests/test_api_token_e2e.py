"""``IMGFLOW_API_TOKEN`` on real workers: writes need the token, reads only when asked to.

Plain HTTP requests against ``faust -A imgflow worker`` processes; the dashboard's
worker client (``LiveFeed``) is pointed at them the way ``panel serve`` uses it.
"""

from __future__ import annotations

import io
import secrets

import pytest
from PIL import Image

from dashboard.feed import LiveFeed
from tests.support import Pipeline, Worker, wait_until

pytestmark = pytest.mark.e2e


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 160, 90)).save(buf, "PNG")
    return buf.getvalue()


def upload(worker: Worker, headers: dict[str, str] | None = None):
    return worker.request(
        "POST",
        "/images/?filename=green.png",
        data=png(),
        headers={"Content-Type": "image/png", **(headers or {})},
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_uploads_need_the_token_and_reads_stay_open(pipeline: Pipeline):
    token = secrets.token_urlsafe(24)
    wrong = secrets.token_urlsafe(24)
    worker = pipeline.start_worker(IMGFLOW_API_TOKEN=token)
    worker.wait_ready()

    status, headers, body = upload(worker)
    assert status == 401 and "API token" in body["error"]
    assert headers["WWW-Authenticate"].startswith("Bearer ")
    for header in (bearer(wrong), {"Authorization": f"Basic {token}"}, {"Authorization": token}):
        status, headers, body = upload(worker, header)
        assert status == 401 and body == {"error": "invalid API token"}
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert not list((pipeline.home / "uploads").rglob("*.png")), "a refused upload was kept"

    status, _, body = upload(worker, {"Authorization": f"bearer {token}"})  # the scheme is case-insensitive
    assert status == 201, body
    image_id = body["image_ids"][0]

    # Reads are open by default, the image's result included.
    stored = wait_until(lambda: worker.get(f"/images/{image_id}")[1].get("status") == "stored", 120, "stored")
    assert stored
    assert worker.get("/counts/")[0] == 200
    assert worker.get("/health/")[0] == 200
    assert worker.request("GET", "/metrics")[0] == 200

    # The token never reaches the log, not even a wrong one.
    log = worker.log_path.read_text(errors="replace")
    assert "refused POST /images/" in log
    assert token not in log and wrong not in log


def test_protected_reads_need_the_token_except_health_and_metrics(pipeline: Pipeline):
    token = secrets.token_urlsafe(24)
    pipeline.extra_env.update({"IMGFLOW_API_TOKEN": token, "IMGFLOW_API_PROTECT_READS": "true"})
    a, b = pipeline.start_worker(), pipeline.start_worker()
    a.wait_ready()
    b.wait_ready()

    for path in ("/counts/", "/counts/local/", "/workers/", "/images/nope", "/debug/consumer", "/router/"):
        status, headers, _ = a.request("GET", path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer "), path
    assert a.get("/images/nope", headers=bearer(token))[0] == 404
    assert a.get("/health/")[0] == 200
    status, _, text = a.request("GET", "/metrics")
    assert status == 200 and "imgflow" in text

    # /counts/ fans out to the other worker's /counts/local/ with the token: a complete answer.
    def complete():
        status, body = a.get("/counts/", headers=bearer(token))
        return status == 200 and body["complete"] and len(body["owners"]) == 2 and body

    body = wait_until(complete, 60, "a complete cluster-wide answer from both workers")
    assert body["errors"] == {}

    # The dashboard's worker client sends the token it is given (from IMGFLOW_API_TOKEN).
    feed = LiveFeed(db=pipeline.mongo(), worker_urls=[a.url], worker_headers=bearer(token))
    feed.refresh_now()
    assert feed.counts_error == "" and feed.counts["complete"]
    # Told one worker's URL, the status line lists both: a knows the group (GET /workers/).
    assert [(w["url"], w["status"]) for w in feed.workers] == sorted([(a.url, "ok"), (b.url, "ok")])
    anonymous = LiveFeed(db=pipeline.mongo(), worker_urls=[a.url], worker_headers={})
    anonymous.refresh_now()
    assert "HTTP 401" in anonymous.counts_error
    # /health/ stays open for probes; the cluster's members are a protected read.
    assert [(w["url"], w["status"]) for w in anonymous.workers] == [(a.url, "ok")]
