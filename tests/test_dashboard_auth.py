"""Dashboard login: ``python -m dashboard.serve`` with Panel's basic auth, over plain HTTP.

The server is the real ``panel serve`` on a loopback port, started the way the
demo launcher and docker-compose start it; requests are plain HTTP with the
cookies Panel sets, no browser.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr

from dashboard.serve import APP, AuthConfigError, serve_command
from devstack.embedded import Service, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # let the test see the 302 itself


_opener = urllib.request.build_opener(_NoRedirect)


def http(url: str, data: dict[str, str] | None = None, cookies: str = "") -> tuple[int, dict, str, list[str]]:
    """(status, headers, body, Set-Cookie values) without following redirects."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Cookie": cookies} if cookies else {})
    try:
        resp = _opener.open(request, timeout=60)
    except urllib.error.HTTPError as exc:
        resp = exc
    with resp:
        text = resp.read().decode(errors="replace")
        return resp.status, dict(resp.headers), text, resp.headers.get_all("Set-Cookie") or []


def settings(auth_file: Path | None, secret: str | None) -> SimpleNamespace:
    return SimpleNamespace(
        dashboard_auth_file=auth_file, cookie_secret=SecretStr(secret) if secret is not None else None
    )


# The command ------------------------------------------------------------------------------


def test_without_a_credentials_file_the_dashboard_is_open():
    argv, env = serve_command(settings(None, None), address="127.0.0.1", port=5006, origins=["x:5006"])
    assert argv[1:3] == ["serve", str(APP)] and "--basic-auth" not in argv and env == {}
    assert argv[argv.index("--allow-websocket-origin") + 1] == "x:5006"


def test_with_a_credentials_file_panel_gets_basic_auth_and_the_secret_stays_off_argv(tmp_path: Path):
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "wonderland"}))
    argv, env = serve_command(settings(users, "c" * 40), address="0.0.0.0", port=5006)
    assert argv[argv.index("--basic-auth") + 1] == str(users.resolve())
    assert env == {"PANEL_COOKIE_SECRET": "c" * 40}
    assert not any("c" * 40 in arg for arg in argv)  # never visible in the process list


@pytest.mark.parametrize(
    ("content", "secret", "words"),
    [
        (None, "s" * 40, "does not exist"),  # Panel would take the path as a password
        ("not json", "s" * 40, "not readable JSON"),
        ("[]", "s" * 40, "JSON object"),
        ('{"alice": ""}', "s" * 40, "non-empty password"),
        ('{"alice": "pw"}', None, "IMGFLOW_COOKIE_SECRET"),
    ],
)
def test_a_credentials_setup_that_cannot_protect_is_refused(tmp_path: Path, content, secret, words):
    users = tmp_path / "users.json"
    if content is not None:
        users.write_text(content)
    with pytest.raises(AuthConfigError, match=words):
        serve_command(settings(users, secret), address="127.0.0.1", port=5006)


# The server -------------------------------------------------------------------------------


@pytest.fixture
def dashboard(mongo_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The dashboard with basic auth for alice, on a loopback port; (base URL, its log).

    Only MongoDB behind it: no broker, no worker, no model (the page renders without them).
    """
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"alice": "wonderland"}))
    port = free_port()
    env = {
        **os.environ,
        "MONGO_URL": mongo_url,
        "MONGO_DB": f"dash_auth_{uuid.uuid4().hex[:8]}",
        "IMGFLOW_HOME": str(tmp_path / "home"),
        "IMGFLOW_DASHBOARD_AUTH_FILE": str(users),
        "IMGFLOW_COOKIE_SECRET": secrets.token_urlsafe(32),
        "IMGFLOW_WORKER_URLS": f"http://127.0.0.1:{free_port()}",  # no worker: the page still renders
        "PYTHONPATH": str(ROOT),
    }
    origin = f"127.0.0.1:{port}"
    service = Service("dashboard", port, tmp_path / "dashboard.log")
    argv = [sys.executable, "-m", "dashboard.serve", "--port", str(port), "--allow-websocket-origin", origin]
    service.start(argv, env=env)
    try:
        assert service.proc is not None
        wait_for_port(port, service.proc, 120, "dashboard")
        yield f"http://{origin}", service.log_path
    finally:
        service.stop()


def test_the_dashboard_asks_for_a_login_and_lets_the_user_in(dashboard: tuple[str, Path]):
    dashboard, log = dashboard
    status, headers, body, _ = http(f"{dashboard}/app")
    assert status == 302, status
    login = urllib.parse.urljoin(f"{dashboard}/app", headers["Location"])
    assert urllib.parse.urlparse(login).path == "/login"
    assert "<title>imgflow" not in body  # nothing of the dashboard itself

    status, headers, body, cookies = http(f"{dashboard}/login", {"username": "alice", "password": "nope"})
    assert status == 302 and "error=" in headers["Location"]
    assert not any(c.startswith("user=") for c in cookies)

    status, headers, _, cookies = http(f"{dashboard}/login", {"username": "alice", "password": "wonderland"})
    assert status == 302
    jar = SimpleCookie()
    for cookie in cookies:
        jar.load(cookie)
    assert "user" in jar  # Panel's signed session cookie
    sent = "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())

    status, _, body, _ = http(f"{dashboard}/app", cookies=sent)
    assert status == 200 and "<title>imgflow" in body
    # The session was opened as alice (what app.py gives DataStore, which records her edits).
    assert "dashboard session opened by alice" in log.read_text(errors="replace")

    # A forged cookie (not signed with the secret) is not a login.
    status, _, body, _ = http(f"{dashboard}/app", cookies="user=alice")
    assert status == 302 and "<title>imgflow" not in body
