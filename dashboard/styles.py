"""The dashboard's CSS, read from ``dashboard/static/*.css``.

Panel draws every component inside its own shadow root, so a page-wide style
sheet does not reach a pane's HTML: each pane lists the sheets it needs with
``stylesheets=``. Panel resolves file paths only for a class's
``_stylesheets``; an instance's ``stylesheets`` are URLs or CSS text, and a URL
would need a static route beside the login. So the files are read once and
their text is passed; Panel then sends one copy per sheet to each browser
session, however many panes use it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


@cache
def stylesheet(name: str) -> str:
    """The text of ``dashboard/static/{name}.css`` (shipped as package data)."""
    return (STATIC / f"{name}.css").read_text(encoding="utf-8")
