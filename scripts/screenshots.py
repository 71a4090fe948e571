"""The pictures of the dashboard (README.md, docs/), taken from the real stack: ``make screenshots``.

Runs ``python -m devstack.launcher demo`` (embedded broker and MongoDB-protocol server, two
workers, the watcher, the simulator, the dashboard) in a fresh ``IMGFLOW_HOME`` with its
worker ports free ones, drops a few broken files into its inbox so that the failures are
real too, and waits until ``--images`` results are stored and ``--seconds`` have passed
since the first (the throughput chart has 10 s buckets and the counts 60 s windows: a
picture after ten seconds shows dots, not lines). Then it opens the dashboard in headless
Chromium (Debian's, driven by Playwright as the browser test does) at ``--viewport`` and
saves, in ``docs/images``:

- ``dashboard.png``: the main view (totals and rates, live counts, throughput, the newest
  results with their previews);
- ``failures.png``: the Failures tab (the broken files: stage, kind, message).

A picture is taken once the page is quiet: every preview decoded, no loading spinner, and
nothing in the page (shadow roots included) changed for ``QUIET_MS``; the shared refresh
redraws every 2 s, so that moment comes between two refreshes. Each PNG is re-encoded with
Pillow (a 256-colour palette when the lossless file is over ``MAX_BYTES``). The launcher
is stopped by its PID with SIGTERM and stops every process it started.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "docs" / "images"
MAX_BYTES = 500_000
#: Settings that would point the demo at another stack, or put the page behind a login.
OWN_STACK = (
    "BROKER_URL",
    "MONGO_URL",
    "IMGFLOW_WORKER_URLS",
    "IMGFLOW_DASHBOARD_AUTH_FILE",
    "IMGFLOW_COOKIE_SECRET",
)
QUIET_MS = 700
#: Whether nothing in the page, shadow roots included, changed for ``quietMs`` within ``maxMs``.
#: New shadow roots sit in observed ones, so their arrival counts as a change.
QUIET_JS = """async ([quietMs, maxMs]) => {
  const start = performance.now();
  let last = start;
  const observer = new MutationObserver(() => { last = performance.now(); });
  const watch = (root) => {
    observer.observe(root, {subtree: true, childList: true, attributes: true, characterData: true});
    for (const el of root.querySelectorAll('*')) if (el.shadowRoot) watch(el.shadowRoot);
  };
  watch(document);
  while (performance.now() - last < quietMs && performance.now() - start < maxMs) {
    await new Promise((r) => setTimeout(r, 50));
  }
  observer.disconnect();
  return performance.now() - last >= quietMs;
}"""
#: Every <img> in the page, shadow roots included: (decoded, total).
IMAGES_JS = """() => {
  const imgs = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'IMG') imgs.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return [imgs.filter((i) => i.complete && i.naturalWidth > 0).length, imgs.length];
}"""


def broken_files(inbox: Path, photo: Path) -> list[str]:
    """Files a person might drop by mistake: each becomes a failure with its own kind."""
    jpeg = photo.read_bytes()
    files = {
        "notes.jpg": b"meeting notes, not a picture\n" * 20,  # not_an_image
        # corrupt_image; like the empty file, sent once the watcher's grace for it to grow is over
        "half-copied.jpg": jpeg[: len(jpeg) // 3],
        "empty.png": b"",  # empty_file
    }
    for name, data in files.items():
        hidden = inbox / f".{name}"  # the watcher skips dot-files: the rename makes it appear whole
        hidden.write_bytes(data)
        hidden.rename(inbox / name)
    return list(files)


class Demo:
    """``python -m devstack.launcher demo`` in its own ``IMGFLOW_HOME``, its output in a file."""

    def __init__(self, home: Path, rate: float) -> None:
        from devstack.embedded import free_port

        self.home = home
        self.log_path = home / "launcher.log"
        env = {k: v for k, v in os.environ.items() if k not in OWN_STACK}
        env.update(IMGFLOW_HOME=str(home), IMGFLOW_WEB_PORT=str(free_port()), TF_CPP_MIN_LOG_LEVEL="2")
        built = ROOT / "var" / "models" / "efficientnet-lite0" / "model.toml"
        if "IMGFLOW_MODEL" not in env and built.exists():
            env["IMGFLOW_MODEL"] = str(built)  # the model `make model` built, not one more build
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.launcher", "demo", "--quiet", "--rate", str(rate)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C here reaches this script, which stops the launcher
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "".join(self.output().splitlines(keepends=True)[-30:])
            raise SystemExit(f"the demo stopped (exit {self.proc.returncode}); {self.log_path}:\n{tail}")

    def find(self, pattern: str, timeout: float) -> re.Match[str]:
        found: re.Match[str] | None = None

        def seen() -> bool:
            nonlocal found
            found = re.search(pattern, self.output())
            return found is not None

        wait(seen, timeout, f"{pattern!r} in {self.log_path}", self)
        assert found is not None
        return found

    def stop(self) -> None:
        """SIGTERM: the launcher stops what it started, newest first, each by PID."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()


def wait(done: Callable[[], bool], timeout: float, what: str, demo: Demo) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        demo.alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f}s waiting for {what} (logs in {demo.home})")
        time.sleep(0.5)


def optimised(png: bytes) -> bytes:
    """The smallest good PNG of a screenshot: lossless if it fits ``MAX_BYTES``, else a palette."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    if out.tell() <= MAX_BYTES:
        return out.getvalue()
    out = io.BytesIO()
    image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG).save(
        out, format="PNG", optimize=True
    )
    return out.getvalue()


def settle(page: Any, timeout_s: float = 60) -> None:
    """Until every image is decoded, no spinner shows and the page has been still for a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        quiet = page.evaluate(QUIET_JS, [QUIET_MS, 10_000])
        decoded, total = page.evaluate(IMAGES_JS)
        spinning = page.locator(".pn-loading").count()
        if quiet and decoded == total and not spinning:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"the page did not settle in {timeout_s:.0f}s: quiet {quiet}, "
                f"{decoded}/{total} images decoded, {spinning} spinners"
            )


def save(page: Any, path: Path) -> Path:
    settle(page)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(optimised(page.screenshot()))
    size = path.stat().st_size
    over = f"; over {MAX_BYTES / 1000:.0f} KB even as a palette" if size > MAX_BYTES else ""
    print(f"wrote {path} ({size / 1000:.0f} KB{over})", flush=True)
    return path


def shoot(url: str, out_dir: Path, viewport: tuple[int, int], min_cards: int, failures: int) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    from devstack.browser import BrowserMissing, launch_chromium

    written = []
    with sync_playwright() as p:
        try:
            browser = launch_chromium(p)
        except BrowserMissing as exc:
            raise SystemExit(str(exc)) from None
        try:
            width, height = viewport
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.set_default_timeout(60_000)
            page.goto(url)
            cards = page.locator(".imgflow-card")
            expect(cards.nth(min_cards - 1)).to_be_visible(timeout=120_000)
            # Live counts from a worker (not "no worker answered"), and the totals filled in.
            expect(page.get_by_text(re.compile(r"from http://127\.0\.0\.1:\d+"))).to_be_visible(
                timeout=60_000
            )
            written.append(save(page, out_dir / "dashboard.png"))

            page.locator(".bk-tab").filter(has_text="Failures").click()
            expect(page.locator(".tabulator-row").nth(failures - 1)).to_be_visible(timeout=60_000)
            # The tab's header at the top of the window: the table, not the charts above it.
            page.locator(".bk-tab").filter(has_text="Failures").evaluate(
                "(tab) => tab.scrollIntoView({block: 'start'})"
            )
            written.append(save(page, out_dir / "failures.png"))
        finally:
            browser.close()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/screenshots.py", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300, help="results stored before the pictures")
    parser.add_argument(
        "--seconds", type=float, default=150, help="at least this long after the first result"
    )
    parser.add_argument("--rate", type=float, default=5.0, help="simulator images/s (the demo's default)")
    parser.add_argument("--viewport", default="1440x1040", help="browser window, WIDTHxHEIGHT")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the demo's IMGFLOW_HOME (logs) afterwards")
    args = parser.parse_args()
    width, height = (int(n) for n in args.viewport.lower().split("x"))

    from imgflow import tally
    from imgflow.mongo import connect

    # SIGTERM (a CI timeout, kill PID) unwinds like Ctrl-C does: the demo is stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="imgflow-screenshots-"))
    demo = Demo(home, args.rate)
    print(f"demo in {home} (launcher pid {demo.proc.pid})", flush=True)
    client = None
    done = False
    try:
        dashboard = demo.find(r"dashboard\s+(http://\S+/app)", 300).group(1)
        mongo = demo.find(r"mongodb\s+(mongodb://\S+)\s+database (\S+)", 10)
        client = connect(mongo.group(1), serverSelectionTimeoutMS=5000)
        db = client[mongo.group(2)]
        demo.find(r"started simulator", 300)
        photo = min((home / "dataset").glob("*.jpg"))
        dropped = broken_files(home / "inbox", photo)

        def counted() -> tuple[int, int]:
            """What the dashboard shows: the exact totals kept as results are written."""
            totals = tally.totals(db)
            return totals[tally.IMAGES], totals[tally.FAILURES]

        wait(lambda: counted()[0] > 0, 300, "the first stored result", demo)
        first = time.monotonic()
        print(f"first result stored {first - began:.0f}s after start; letting the charts fill", flush=True)

        def enough() -> bool:
            stored, failed = counted()
            return (
                stored >= args.images and failed >= len(dropped) and time.monotonic() - first >= args.seconds
            )

        wait(enough, args.seconds + 600, f"{args.images} results and {len(dropped)} failures", demo)
        stored, failed = counted()
        print(f"{stored} results and {failed} failures stored; {dashboard} in Chromium at {width}x{height}")
        shoot(dashboard, args.out, (width, height), min_cards=12, failures=len(dropped))
        done = True
    finally:
        if client is not None:
            client.close()
        demo.stop()
        if done and not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"logs kept in {home}", flush=True)
    print(f"done in {time.monotonic() - began:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
