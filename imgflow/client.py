"""A client of the workers' web views, for the processes beside them (the dashboard, the CLI).

Plain ``urllib`` with short timeouts: a worker that does not answer costs seconds, not a stuck
caller (async callers run it in a thread). Reads may be protected by ``IMGFLOW_API_TOKEN``, so
requests carry the headers ``imgflow.auth.auth_headers`` gives for the settings.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

HTTP_TIMEOUT = 3.0


class _Refuse(urllib.request.HTTPRedirectHandler):
    """A redirect is answered, not followed: the token goes only to the address asked."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_Refuse)


def fetch_json(
    url: str, timeout: float = HTTP_TIMEOUT, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """GET ``url``; (status, parsed JSON). Raises OSError/ValueError when nobody answers sensibly."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _NO_REDIRECTS.open(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body or b"null")
        except ValueError:
            return exc.code, None


def cluster_members(
    urls: Iterable[str], timeout: float = HTTP_TIMEOUT, headers: dict[str, str] | None = None
) -> list[str]:
    """Every worker of the cluster (``GET /workers/``: the URLs the consumer group's members
    advertise) from the first of ``urls`` that answers; [] if none does."""
    for url in urls:
        try:
            status, body = fetch_json(f"{url.rstrip('/')}/workers/", timeout, headers)
        except (OSError, ValueError):
            continue
        if status == 200 and isinstance(body, dict) and isinstance(body.get("members"), list):
            return [str(member).rstrip("/") for member in body["members"]]
    return []
