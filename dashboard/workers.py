"""The dashboard's client of the workers' web views: ``/counts/``, ``/workers/`` and ``/health/``.

Plain ``urllib`` with short timeouts (``imgflow.client``): the shared feed
calls it from a thread once per refresh, and a worker that does not answer must
cost seconds, not a stuck page. Reads may be protected by ``IMGFLOW_API_TOKEN``, so every request
carries the headers ``imgflow.auth.auth_headers`` gives for the settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dashboard.queries import model_key
from imgflow.client import HTTP_TIMEOUT, cluster_members, fetch_json


def configured_urls() -> list[str]:
    """IMGFLOW_WORKER_URLS: the workers the dashboard may ask."""
    from imgflow.settings import get_settings

    return get_settings().worker_url_list


def configured_headers() -> dict[str, str]:
    """``Authorization: Bearer`` when IMGFLOW_API_TOKEN is set (reads may be protected), else none."""
    from imgflow.auth import auth_headers
    from imgflow.settings import get_settings

    return auth_headers(get_settings())


def fetch_counts(
    urls: Iterable[str],
    windows: int = 30,
    timeout: float = HTTP_TIMEOUT,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Cluster-wide label counts from the first worker that answers ``GET /counts/``.

    Any worker answers for the whole cluster (it fans out to the owners), so
    one good answer is enough; the others are only tried when it fails.
    """
    errors: dict[str, str] = {}
    for url in urls:
        try:
            status, body = fetch_json(f"{url}/counts/?windows={windows}", timeout, headers)
        except (OSError, ValueError) as exc:
            errors[url] = f"{type(exc).__name__}: {exc}"
            continue
        if status == 200 and isinstance(body, dict) and "windows" in body:
            return {"ok": True, "url": url, "body": body, "errors": errors}
        errors[url] = f"HTTP {status}"
    return {"ok": False, "url": None, "body": None, "errors": errors}


def probe_health(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One worker's row: up / starting / down, its models and lag, under the URL it advertises."""
    row: dict[str, Any] = {
        "url": url,
        "status": "down",
        "models": [],
        "lag": None,
        "error": "",
        "stalled": [],
    }
    try:
        status, body = fetch_json(f"{url}/health/", timeout, headers)
    except (OSError, ValueError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        return row
    body = body if isinstance(body, dict) else {}
    # A load-balanced address answers as one of the workers: name the row after that worker.
    row["url"] = str(body.get("url") or url).rstrip("/")
    row["status"] = "ok" if status == 200 else str(body.get("status") or f"HTTP {status}")
    row["models"] = [model_key(m.get("name"), m.get("version")) for m in body.get("models") or []]
    row["lag"] = body.get("lag")
    row["stalled"] = body.get("stalled") or []
    return row


def worker_health(
    urls: Iterable[str], timeout: float = 2.0, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per worker of the cluster, sorted by URL (the line keeps its order between refreshes).

    ``IMGFLOW_WORKER_URLS`` may be one load-balanced address (a Compose service, a Kubernetes
    Service: one replica per request) and the cluster may grow and shrink, so the workers are
    the members any of them reports (``GET /workers/``) plus the configured URLs (a configured
    worker that died has left the group but keeps its row, down). Rows are keyed by the URL
    each worker advertises, so an address that reached a member is not listed twice. Asked in
    parallel: a worker that does not answer costs ``timeout`` once, not once per worker.
    """
    configured = list(dict.fromkeys(url.rstrip("/") for url in urls))
    targets = list(dict.fromkeys([*configured, *cluster_members(configured, timeout, headers)]))
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        probed = list(pool.map(lambda url: probe_health(url, timeout, headers), targets))
    rows: dict[str, dict[str, Any]] = {}
    for row in probed:
        kept = rows.get(row["url"])
        if kept is None or (kept["status"] == "down" and row["status"] != "down"):
            rows[row["url"]] = row
    return [rows[url] for url in sorted(rows)]


def current_window(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The window to draw as bars: the current one, or the newest if the current is empty."""
    if not body:
        return None
    current = body.get("current") or {}
    if current.get("total"):
        return current
    windows = body.get("windows") or []
    return windows[0] if windows else (current or None)
