"""The dashboard in a real headless Chromium, against the real stack.

Embedded broker and MongoDB-protocol server, a real ``faust -A imgflow worker``,
real photographs, ``panel serve dashboard/app.py`` as its own process with the
pipeline's environment, and Debian's Chromium driven by Playwright's Python API
(docs/design.md §10). ``scripts/install-browser.sh`` installs Chromium; without
it this test fails, it does not skip.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.browser import FAKE_CAMERA, BrowserMissing, launch_chromium
from devstack.embedded import free_port
from simulator.dataset import write_dataset
from tests.support import BIN, Pipeline, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
#: Scroll every scrolled element, shadow roots included, back to the top.
SCROLL_TO_TOP = """() => {
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.scrollTop > 0) el.scrollTop = 0;
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  window.scrollTo(0, 0);
}"""
FIRST, LATER = 8, 4  # images before the page opens, and while it is open


def start_dashboard(pipeline: Pipeline, worker_url: str, dataset: Path, log: Path):
    """``panel serve dashboard/app.py`` with the pipeline's environment; (process, URL)."""
    port = free_port()
    env = pipeline.env(IMGFLOW_WORKER_URLS=worker_url, IMGFLOW_DATASET_DIR=str(dataset))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "panel"),
                "serve",
                str(ROOT / "dashboard" / "app.py"),
                "--address",
                "127.0.0.1",
                "--port",
                str(port),
                "--allow-websocket-origin",
                f"127.0.0.1:{port}",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}/app"


def answers(url: str, proc: subprocess.Popen, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"panel serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce from a thread of its own: Playwright's sync API keeps an event loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, produce_raw(bootstrap, topic, messages)).result(timeout=120)


def launch(playwright, extra_args=()):
    try:
        return launch_chromium(playwright, extra_args)
    except BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def test_dashboard_in_chromium_shows_filters_hides_and_corrects(pipeline: Pipeline, tmp_path: Path):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        pytest.fail(f"the playwright package is missing ({exc}): pip install -e '.[dev]'", pytrace=False)

    started = time.monotonic()
    dataset_dir = tmp_path / "dataset"
    photos = [p for p in write_dataset(dataset_dir, variants=1)][: FIRST + LATER]
    assert len(photos) == FIRST + LATER
    pipeline.extra_env["IMGFLOW_DATASET_DIR"] = str(dataset_dir)
    worker = pipeline.start_worker()
    messages = [path_message(p, source="browser-test") for p in photos]
    db = pipeline.mongo()
    worker.wait_ready()
    bootstrap, paths_topic = pipeline.services.bootstrap, pipeline.topic("paths")
    publish(bootstrap, paths_topic, messages[:FIRST])
    wait_until(lambda: db.images.count_documents({}) >= FIRST, 180, f"{FIRST} images stored")

    log = tmp_path / "dashboard.log"
    proc, url = start_dashboard(pipeline, worker.url, dataset_dir, log)
    screenshot = tmp_path / "dashboard.png"
    try:
        wait_until(lambda: answers(url, proc, log), 60, "panel serve to answer")
        with sync_playwright() as p:
            browser = launch(p)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1100})
                page.set_default_timeout(30_000)
                page.goto(url)
                cards = page.locator(".imgflow-card")
                expect(cards).to_have_count(FIRST, timeout=60_000)

                # New results reach an open page through the shared refresh, without a reload.
                publish(bootstrap, paths_topic, messages[FIRST:])
                expect(cards).to_have_count(FIRST + LATER, timeout=120_000)
                docs = {d["_id"]: d for d in db.images.find()}
                assert len(docs) == FIRST + LATER

                # Every image is shown with its file name and its label.
                for doc in docs.values():
                    card = cards.filter(has_text=doc["file_name"])
                    expect(card).to_have_count(1)
                    expect(card).to_contain_text(doc["label"])
                expect(page.get_by_text(f"{FIRST + LATER} images", exact=True)).to_be_visible()

                # Live counts came from the worker's GET /counts/.
                expect(page.get_by_text(f"from {worker.url}")).to_be_visible(timeout=60_000)

                # A label filter shrinks the gallery to that label's images.
                by_label: dict[str, list[str]] = {}
                for image_id, doc in docs.items():
                    by_label.setdefault(doc["label"], []).append(image_id)
                label, members = max(by_label.items(), key=lambda kv: (len(kv[1]), kv[0]))
                page.locator(".filter-label select").select_option(label)
                expect(cards).to_have_count(len(members))
                for image_id in members:
                    expect(cards.filter(has_text=docs[image_id]["file_name"])).to_have_count(1)
                page.locator(".filter-label select").select_option("(all)")
                expect(cards).to_have_count(FIRST + LATER)

                # Hide one: it leaves the gallery, and MongoDB says hidden.
                hidden_id = next(i for i in docs if i not in members)
                hidden_card = cards.filter(has_text=docs[hidden_id]["file_name"])
                hidden_card.get_by_role("button", name="Hide").click()
                expect(cards).to_have_count(FIRST + LATER - 1)
                expect(hidden_card).to_have_count(0)
                is_hidden = lambda: db.images.find_one({"_id": hidden_id})["hidden"] is True  # noqa: E731
                wait_until(is_hidden, 10, "hidden in MongoDB")

                # Correct one label in the detail view: stored in MongoDB, shown as corrected.
                fixed_id = members[0]
                fixed_name = docs[fixed_id]["file_name"]
                cards.filter(has_text=fixed_name).get_by_role("button", name="Details").click()
                page.get_by_role("button", name="Save label").wait_for()
                page.locator(".correct-label input").fill("hand-checked label")
                page.get_by_role("button", name="Save label").click()
                wait_until(
                    lambda: (
                        (db.images.find_one({"_id": fixed_id}).get("feedback") or {}).get("label")
                        == "hand-checked label"
                    ),
                    10,
                    "the corrected label in MongoDB",
                )
                expect(cards.filter(has_text=fixed_name)).to_contain_text("✎ hand-checked label")
                feedback = db.images.find_one({"_id": fixed_id})["feedback"]
                assert feedback["predicted_label"] == docs[fixed_id]["label"] and feedback["at"]

                # The whole dashboard in one picture: a tall window, scrolled to the top.
                page.set_viewport_size({"width": 1600, "height": 1900})
                page.evaluate(SCROLL_TO_TOP)
                page.wait_for_timeout(500)  # let the charts settle before the picture
                page.screenshot(path=str(screenshot))
            finally:
                browser.close()
    finally:
        stop(proc)
    print(f"\ndashboard screenshot: {screenshot}  ({time.monotonic() - started:.0f}s)")
    assert screenshot.stat().st_size > 10_000


#: Chromium's fake camera (a moving test pattern) and an automatic yes to the camera prompt.
def test_live_tab_streams_the_webcam_and_shows_uploads_in_chromium(pipeline: Pipeline, tmp_path: Path):
    """The Live tab: Chromium's fake camera through the frames topic, results back on the page;
    an upload from the page shown with its result once stored."""
    from playwright.sync_api import expect, sync_playwright

    worker = pipeline.start_worker()
    db = pipeline.mongo()
    photo_path = write_dataset(tmp_path / "dataset", variants=1)[0]
    worker.wait_ready()
    log = tmp_path / "dashboard.log"
    proc, url = start_dashboard(pipeline, worker.url, tmp_path / "dataset", log)
    try:
        wait_until(lambda: answers(url, proc, log), 60, "panel serve to answer")
        with sync_playwright() as p:
            browser = launch(p, FAKE_CAMERA)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.grant_permissions(["camera"])
                page = context.new_page()
                page.set_default_timeout(30_000)
                page.goto(url)
                page.locator(".bk-tab").filter(has_text="Live").click()
                page.get_by_role("button", name="Start camera").click()
                # Results come back for the camera's frames: the counters move and a label shows.
                expect(page.locator(".live-stats")).to_contain_text("results", timeout=60_000)
                wait_until(
                    lambda: db.images.count_documents({"source": {"$regex": "^webcam-"}}) >= 2,
                    120,
                    "two webcam frames stored",
                )
                webcam = db.images.find_one({"source": {"$regex": "^webcam-"}})
                assert webcam["path"].startswith(f"frame://{webcam['source']}/")
                expect(page.locator(".live-result")).not_to_contain_text("Start the camera", timeout=60_000)
                expect(page.locator(".live-stats")).not_to_contain_text("results 0", timeout=60_000)
                page.get_by_role("button", name="Stop camera").click()

                # Upload from the page: sent as a frame, its result shown when stored.
                page.locator("input[type=file]").set_input_files(str(photo_path))
                wait_until(
                    lambda: db.images.find_one({"source": "upload-page"}), 120, "the uploaded image stored"
                )
                uploaded = db.images.find_one({"source": "upload-page"})
                assert uploaded["file_name"] == photo_path.name
                expect(page.locator(".upload-result")).to_contain_text(uploaded["label"], timeout=30_000)
                page.screenshot(path=str(tmp_path / "live.png"))
            finally:
                browser.close()
    finally:
        stop(proc)
