"""Stored values as text people read, and escaping: every view formats the same way.

Anything that came from a file name, a label or a worker is escaped with
``esc`` before it goes into HTML: a file called ``<img onerror=...>.png`` is
shown as text, never run.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from dashboard.queries import as_utc

#: Shown where a value is missing.
NONE = "—"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt_time(value: datetime | None, with_date: bool = False) -> str:
    value = as_utc(value)
    if value is None:
        return NONE
    return value.strftime("%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S UTC")


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return NONE
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def meta(body: str) -> str:
    """A line of small grey text (``.meta`` in static/text.css); ``body`` is already HTML."""
    return f'<div class="meta">{body}</div>'


def status_html(error: str, message: str) -> str:
    """The outcome of the user's last action, after the last MongoDB error if there is one."""
    prefix = f'<span class="down">{esc(error)}</span> ' if error else ""
    return meta(f"{prefix}{esc(message)}")
