"""Closed doors (issue "Closed doors on the web and in the cluster"): the findings fixed so far,
each with the test that failed before its fix."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dashboard.feed import LiveFeed
from dashboard.feedback import as_csv
from dashboard.live import ThroughputView
from imgflow.auth import token_matches, token_middleware
from imgflow.client import fetch_json
from imgflow.settings import Settings


@pytest.mark.parametrize("header", ["Bearer \xff", "Bearer \udcff", "Bearer sécret"])
def test_a_token_that_is_not_ascii_is_no_token(header: str) -> None:
    assert token_matches(header, "s3cret") is False


async def test_a_malformed_authorization_header_is_401_not_500() -> None:
    settings = Settings(IMGFLOW_API_TOKEN="s3cret", IMGFLOW_API_PROTECT_READS="true")

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    application = web.Application(middlewares=[token_middleware(settings)])  # type: ignore[list-item]  # as the app passes it
    application.router.add_get("/counts/", ok)
    async with TestServer(application, host="127.0.0.1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"GET /counts/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_workers_lag_reaches_the_page_escaped() -> None:
    feed = LiveFeed(db=None, worker_urls=[])
    feed.workers = [{"url": "http://w1", "status": "ok", "models": [], "lag": "<img src=x onerror=alert(1)>"}]
    html = ThroughputView(feed=feed).workers_html()
    assert "<img" not in html and "lag &lt;img src=x" in html


def test_the_csv_export_never_holds_a_formula() -> None:
    rows = [{"image_id": "a", "label": '=HYPERLINK("http://x")', "path": "+1", "file_name": "@sum"}]
    text = as_csv(rows)
    assert "'=HYPERLINK" in text and "'+1" in text and "'@sum" in text


@pytest.fixture
def redirecting() -> Iterator[tuple[str, list[str]]]:
    """A server that redirects every request to a second one, which notes the Authorization
    header it receives: (the first's URL, what the second received)."""
    received: list[str] = []

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.append(self.headers.get("Authorization") or "")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{sink.server_port}/stolen")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (sink, front)]
    for thread in threads:
        thread.start()
    try:
        yield f"http://127.0.0.1:{front.server_port}", received
    finally:
        for server in (front, sink):
            server.shutdown()
            server.server_close()


def test_the_client_follows_no_redirect_with_the_token(redirecting: tuple[str, list[str]]) -> None:
    url, received = redirecting
    status, _body = fetch_json(f"{url}/health/", headers={"Authorization": "Bearer s3cret"})
    assert status == 302
    assert received == []
