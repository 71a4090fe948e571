"""Headless Chromium for the dashboard's browser test, its screenshots and the frames benchmark.

Debian's Chromium (``make browser``), driven by Playwright. Started without its background
connections: this machine's closed network refuses them, many at a time, and they would
slow every page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: A webcam that films a test pattern, allowed without asking (the Live tab's camera).
FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


class BrowserMissing(RuntimeError):
    """Chromium is not installed, or Playwright cannot start it."""


def launch_chromium(playwright: Any, extra_args: Sequence[str] = ()) -> Any:
    """A headless Chromium browser from a Playwright (sync) instance."""
    if not Path(CHROMIUM).exists():
        raise BrowserMissing(f"{CHROMIUM} is missing: run `make browser` (as root: apt-get install chromium)")
    try:
        return playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args], headless=True
        )
    except Exception as exc:
        raise BrowserMissing(f"Chromium at {CHROMIUM} could not be launched by Playwright: {exc}") from exc
