"""Lifecycle mode: inbox -> ``processing/`` -> ``processed/`` or ``failed/`` as results arrive.

A settled ``ROOT/a/cat.jpg`` is moved to ``ROOT/processing/a/cat.jpg`` before
that path is published (:func:`to_processing`); when its result arrives on
``imgflow-stored`` / ``imgflow-failed`` (:class:`~sources.results.ResultWatch`)
:class:`Lifecycle` moves it on and points its MongoDB documents at the new
place, so previews and replays keep finding the file. Results that arrived
while the watcher was down are found in MongoDB on start. A clash of names adds
``-<id prefix>``: a file is never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from sources.results import ResultWatch
from sources.watcher.journal import Entry, Journal

log = logging.getLogger(__name__)


def free_name(path: Path, image_id: str) -> Path:
    """``path``, or ``stem-<id prefix>.ext`` beside it when that name is taken."""
    if not path.exists():
        return path
    return path.with_name(f"{path.stem}-{image_id[:8]}{path.suffix}")


def move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        raise FileExistsError(f"{dest} exists")
    shutil.move(str(src), str(dest))


def processing_path(root: Path, path: Path, image_id: str) -> Path:
    """Where a settled file under ``root`` is moved before it is published."""
    return free_name(root / "processing" / path.relative_to(root), image_id)


def to_processing(entry: Entry, journal: Journal) -> bool:
    """Move a lifecycle file to its ``processing/`` path unless it is there already.

    False when it cannot move: its row is ``abandoned`` and it is not published.
    """
    if not entry.lifecycle or Path(entry.sent_path).exists():
        return True
    try:
        move(Path(entry.path), Path(entry.sent_path))
    except OSError as exc:
        log.error("cannot move %s to %s: %s", entry.path, entry.sent_path, exc)
        journal.mark([entry.image_id], "abandoned")
        return False
    return True


class Lifecycle:
    """Moves each sent file on when its result arrives, and keeps MongoDB pointing at it.

    ``store`` (an :class:`imgflow.storage.Store`, optional) is read for results
    that arrived while the watcher was down and updated with the files' new
    paths; without it only the result topics are followed.
    """

    def __init__(self, journal: Journal, results: ResultWatch, store: Any = None) -> None:
        self.journal = journal
        self.results = results
        self.store = store

    def expect(self, entries: list[Entry]) -> None:
        """Follow the results of these entries (call before they are published)."""
        self.results.expect(e.image_id for e in entries if e.lifecycle)

    async def start(self) -> None:
        """Take the results position, then finish what completed while the watcher was down."""
        await self.results.start()
        await self._reconcile()

    async def stop(self) -> None:
        await self.results.stop()

    async def _reconcile(self) -> None:
        """Results that arrived while the watcher was down, from MongoDB."""
        waiting = {e.image_id: e for e in self.journal.in_state("sent") if e.lifecycle}
        if not waiting:
            return
        self.results.expect(waiting)
        if self.store is None:
            return
        ids = list(waiting)
        done: dict[str, str] = {}
        for name, status in (("failures", "failed"), ("images", "stored")):
            async for doc in self.store.db[name].find({"_id": {"$in": ids}}, {"_id": 1}):
                done[doc["_id"]] = status
        for image_id, status in done.items():
            await self.finish(waiting[image_id], status)

    async def follow(self) -> None:
        """Finish each file as its result arrives; runs until cancelled."""
        while True:
            try:
                outcomes = await self.results.poll(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading results failed, retrying: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for outcome in outcomes:
                entry = self.journal.by_id(outcome.image_id)
                # "pending": the result beat the journal write that follows the broker's ack.
                if entry is not None and entry.state in ("pending", "sent"):
                    await self.finish(entry, outcome.status)

    async def finish(self, entry: Entry, status: str) -> None:
        """Move a processed file on to ``processed/`` or ``failed/``."""
        root = Path(entry.root)
        src = Path(entry.sent_path)
        folder = "processed" if status == "stored" else "failed"
        try:
            rel = src.relative_to(root / "processing")
        except ValueError:
            rel = Path(src.name)
        dest = free_name(root / folder / rel, entry.image_id)
        moved: Path | None = dest
        try:
            move(src, dest)
        except FileNotFoundError:
            log.warning("%s is gone; cannot move it to %s/", src, folder)
            moved = None
        except OSError as exc:
            log.error("cannot move %s to %s: %s", src, dest, exc)
            moved = None
        if moved is not None:
            log.info("%s %s -> %s", status, entry.image_id, moved)
            await self._repoint(entry.image_id, moved)
        self.journal.mark([entry.image_id], status, final_path=str(moved) if moved else None)
        self.results.forget([entry.image_id])

    async def _repoint(self, image_id: str, path: Path) -> None:
        """Keep the stored documents' ``path`` on the file (previews, replays)."""
        if self.store is None:
            return
        update = {"$set": {"path": str(path)}}
        try:
            db = self.store.db
            await db.images.update_one({"_id": image_id}, update)
            await db.predictions.update_many({"image_id": image_id}, update)
            await db.failures.update_one({"_id": image_id}, update)
        except Exception as exc:  # the file moved all the same; only the link is stale
            log.warning("could not update the path of %s in MongoDB: %s", image_id, exc)
