"""The API token policy as pure functions (the workers enforce it in test_api_token_e2e.py)."""

from __future__ import annotations

import pytest

from imgflow.auth import auth_headers, needs_token, token_matches
from imgflow.settings import Settings


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "post", "SEARCH"])
def test_every_write_needs_the_token_whatever_the_path(method: str):
    for path in ("/images/", "/health/", "/metrics", "/anything-added-later"):
        assert needs_token(method, path, protect_reads=False)


def test_reads_are_open_unless_protected_and_probes_always_are():
    for path in ("/counts/", "/images/abc", "/debug/consumer", "/router/", "/table/x/"):
        assert not needs_token("GET", path, protect_reads=False)
        assert needs_token("GET", path, protect_reads=True)
        assert needs_token("HEAD", path, protect_reads=True)
    for path in ("/health/", "/metrics"):
        assert not needs_token("GET", path, protect_reads=True)
    assert needs_token("GET", "/health/../counts/", protect_reads=True)  # only the exact paths
    assert not needs_token("OPTIONS", "/images/", protect_reads=True)  # CORS preflight


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-token", True),
        ("bearer s3cret-token", True),
        ("Bearer  s3cret-token ", True),
        ("Bearer s3cret-tokeN", False),
        ("Bearer s3cret", False),
        ("Bearer s3cret-token-and-more", False),
        ("Basic s3cret-token", False),
        ("s3cret-token", False),
        ("Bearer ", False),
        ("", False),
        (None, False),
    ],
)
def test_the_token_is_matched_exactly(header: str | None, ok: bool):
    assert token_matches(header, "s3cret-token") is ok


def test_settings_hide_the_secrets_and_treat_empty_as_unset(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IMGFLOW_API_TOKEN", "s3cret-token")
    monkeypatch.setenv("IMGFLOW_COOKIE_SECRET", "cookie-s3cret")
    s = Settings()
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert auth_headers(s) == {"Authorization": "Bearer s3cret-token"}
    assert s.api_protect_reads is False

    monkeypatch.setenv("IMGFLOW_API_TOKEN", "")  # Compose's ${IMGFLOW_API_TOKEN:-}
    monkeypatch.setenv("IMGFLOW_COOKIE_SECRET", " ")
    monkeypatch.setenv("IMGFLOW_API_PROTECT_READS", "true")
    s = Settings()
    assert s.api_token is None and s.cookie_secret is None and auth_headers(s) == {}
    assert s.api_protect_reads is True
