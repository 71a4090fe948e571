"""Bearer-token access to the worker's web server (``IMGFLOW_API_TOKEN``).

With no token configured everything stays open, as on a developer's machine.
With a token, every request that may change state (any method but GET, HEAD
and OPTIONS: ``POST /images/`` today, whatever is added later) needs
``Authorization: Bearer <token>``; with ``IMGFLOW_API_PROTECT_READS=true`` the
reads need it too, except ``/health/`` and ``/metrics``, which orchestrators'
probes and Prometheus scrape without credentials.

It is one aiohttp middleware on the whole web application (installed through
Faust's ``web_application_options`` in imgflow/app.py), not a decorator per
view: a view added later, and Faust's own ``/router/`` and ``/table/`` views,
are covered without anyone remembering to. The token is compared with
``hmac.compare_digest`` (no timing hint of how much of it matched), is never
logged, and is accepted only in the header: a query string lands in proxies'
access logs.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: Reads that stay open even with IMGFLOW_API_PROTECT_READS (liveness probes, Prometheus).
ALWAYS_OPEN = frozenset({"/health/", "/health", "/metrics", "/metrics/"})
#: Methods that change nothing (OPTIONS: CORS preflight, which never carries credentials).
READ_METHODS = frozenset({"GET", "HEAD"})
REALM = "imgflow"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def needs_token(method: str, path: str, protect_reads: bool) -> bool:
    """Whether a request must carry the token (when one is configured)."""
    method = method.upper()
    if method == "OPTIONS":
        return False
    if method not in READ_METHODS:
        return True
    return protect_reads and path not in ALWAYS_OPEN


def token_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 6750), compared in constant time."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    try:  # a header is bytes decoded leniently: whatever does not encode back is no token
        presented = value.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(presented, token.encode())


def auth_headers(settings: Any) -> dict[str, str]:
    """Headers for imgflow's own clients of the worker views (dashboard, fan-out, CLI)."""
    token = getattr(settings, "api_token", None)
    if token is None:
        return {}
    return {"Authorization": f"Bearer {token.get_secret_value()}"}


def unauthorized(presented: bool) -> web.Response:
    """401 with a JSON error and the challenge RFC 6750 asks for."""
    challenge = f'Bearer realm="{REALM}"'
    if presented:
        challenge += ', error="invalid_token"'
        message = "invalid API token"
    else:
        message = "this view needs an API token: send Authorization: Bearer <IMGFLOW_API_TOKEN>"
    return web.json_response({"error": message}, status=401, headers={"WWW-Authenticate": challenge})


def token_middleware(settings: Any) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware enforcing ``settings.api_token`` / ``api_protect_reads``."""
    token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    protect_reads = bool(settings.api_protect_reads)

    @web.middleware
    async def require_api_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or not needs_token(request.method, request.path, protect_reads):
            return await handler(request)
        header = request.headers.get("Authorization")
        if token_matches(header, token):
            return await handler(request)
        # The path and the remote address only; never the header's value.
        log.warning(
            "refused %s %s from %s: %s",
            request.method,
            request.path,
            request.remote,
            "wrong API token" if header else "no API token",
        )
        return unauthorized(presented=bool(header))

    return require_api_token
