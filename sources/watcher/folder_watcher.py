"""The folder watcher: OS events in, each settled image published once (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from imgflow.files import IMAGE_SUFFIXES
from imgflow.records import ImagePath, new_image_id
from imgflow.retry import retry
from models.safeio import ReadRefused, read_regular
from sources.publish import path_message, publish_paths
from sources.results import ResultWatch
from sources.watcher.checks import (
    dedupe_roots,
    in_progress_name,
    is_candidate,
    relative_parts,
    skipped_dir,
    stat_file,
    walk,
)
from sources.watcher.journal import Entry, Journal
from sources.watcher.lifecycle import Lifecycle, processing_path, to_processing
from sources.watcher.settle import Settler

log = logging.getLogger(__name__)

#: Messages per publish (and per journal commit) when many files settle at once.
PUBLISH_CHUNK = 100

Publish = Callable[[list[ImagePath]], Awaitable[Any]]


class FolderWatcher:
    """Watches ``roots`` and publishes each settled image once (see the package docstring).

    ``publish`` is :func:`~sources.publish.publish_paths` unless a test
    records the messages instead; ``results`` (and optionally ``store``) are
    needed in lifecycle mode only.
    """

    def __init__(
        self,
        roots: list[Path],
        journal: Journal,
        *,
        recursive: bool = True,
        settle: float = 1.0,
        lifecycle: bool = False,
        source: str = "watch",
        publish: Publish = publish_paths,
        results: ResultWatch | None = None,
        store: Any = None,
        debounce_ms: int = 400,
        prune_every: float = 3600.0,
        bucket: str | None = None,
    ) -> None:
        self.roots = dedupe_roots([r.resolve() for r in roots], recursive)
        self.journal = journal
        self.recursive = recursive
        self.lifecycle = lifecycle
        self.source = source
        self.publish = publish
        #: Put each file in this object-store prefix and publish its URI (IMGFLOW_WATCH_UPLOAD_URI).
        self.bucket = bucket.rstrip("/") if bucket else None
        self.debounce_ms = debounce_ms
        self.prune_every = prune_every
        self.settler = Settler(settle)
        self.sent = 0
        self._ignored: set[Path] = set()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()  # set once the start-up scan is done
        if lifecycle and results is None:
            raise ValueError("lifecycle needs a ResultWatch")
        self.mover = Lifecycle(journal, results, store) if lifecycle and results is not None else None

    def stop(self) -> None:
        self._stop.set()

    def root_of(self, path: Path) -> Path | None:
        for root in self.roots:
            if path == root or root in path.parents:
                if not self.recursive and path.parent != root:
                    return None
                return root
        return None

    # Events -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until :meth:`stop` is called or the task is cancelled."""
        from watchfiles import awatch

        for root in self.roots:
            root.mkdir(parents=True, exist_ok=True)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def watch() -> None:
            try:
                async for changes in awatch(
                    *self.roots,
                    watch_filter=None,
                    debounce=self.debounce_ms,
                    step=50,
                    stop_event=self._stop,
                    recursive=self.recursive,
                ):
                    queue.put_nowait(changes)
            except Exception as exc:  # surfaced by the main loop
                queue.put_nowait(exc)
            queue.put_nowait(None)

        async def stopper() -> None:
            await self._stop.wait()
            queue.put_nowait(None)

        tasks = [asyncio.create_task(watch(), name="imgflow-watch"), asyncio.create_task(stopper())]
        # awatch registers the OS watch in its first step, before its first await: let it run
        # now, so that a file arriving during the scan below is seen by one or the other.
        await asyncio.sleep(0)
        follower = None
        try:
            if self.mover is not None:
                await self.mover.start()
                follower = asyncio.create_task(self.mover.follow(), name="imgflow-watch-results")
            await self._resume_pending()
            for root in self.roots:
                await self.scan(root)
            self.ready.set()
            pruned_at = -float("inf")
            while not self._stop.is_set():
                if time.monotonic() - pruned_at >= self.prune_every:
                    await self.prune_journal()
                    pruned_at = time.monotonic()
                await self._send_settled()
                prune_due = pruned_at + self.prune_every
                settle_due = self.settler.next_due()
                due = prune_due if settle_due is None else min(settle_due, prune_due)
                timeout = max(0.0, due - time.monotonic())
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    continue
                if item is None:
                    break
                if isinstance(item, Exception):
                    raise item
                await self.on_changes(item)
        finally:
            self._stop.set()
            for task in [*tasks, follower]:
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in [*tasks, follower] if t is not None), return_exceptions=True)
            if self.mover is not None:
                await self.mover.stop()

    async def prune_journal(self) -> int:
        """Forget the journal rows whose files have left their paths (deleted, moved, replaced).

        The journal must remember a file only while it can still be seen: a row for a file
        that is still there is what stops a restart from resending it. Rows whose file is
        gone can never match again (the key is path, size and mtime), so the journal holds
        about one row per file in the folders, not one per file ever seen. The files are
        checked in a thread, a thousand rows at a time.
        """
        forgotten, after = 0, 0
        while rows := self.journal.done_rows(after):
            after = rows[-1][0]
            gone = await asyncio.to_thread(_gone, rows)
            if gone:
                forgotten += self.journal.forget(gone)
        if forgotten:
            log.info("journal: forgot %d files that left the watched folders", forgotten)
        return forgotten

    async def on_changes(self, changes: set[tuple[Any, str]]) -> None:
        from watchfiles import Change

        for change, raw in sorted(changes, key=lambda c: c[1]):
            path = Path(raw)
            if change == Change.deleted:
                self.settler.forget(path)
                continue
            if path.is_dir():
                if change == Change.added:
                    await self.scan(path)  # a folder moved in: the OS reports only the folder
                continue
            self.consider(path)

    def consider(self, path: Path, st: os.stat_result | None = None) -> None:
        root = self.root_of(path)
        if root is None:
            return
        if not is_candidate(path, root, self.lifecycle):
            parts = relative_parts(path, root) or ()
            if (
                path.suffix.lower() not in IMAGE_SUFFIXES
                and not skipped_dir(parts[:-1], self.lifecycle)
                and not in_progress_name(path.name)
                and path not in self._ignored
            ):
                self._ignored.add(path)
                log.info("ignoring %s: not an image file name (%s)", path, ", ".join(sorted(IMAGE_SUFFIXES)))
            return
        st = st or stat_file(path)
        if st is None:
            return
        if self.journal.known(path, st.st_size, st.st_mtime_ns) is not None:
            return  # already sent (or a metadata-only change of a sent file)
        self.settler.touch(path, st)

    async def scan(self, folder: Path) -> None:
        """Consider every file under ``folder`` (start-up, or a folder moved in)."""
        root = self.root_of(folder) or (folder if folder in self.roots else None)
        if root is None:
            return
        found = await asyncio.to_thread(walk, folder, root, self.recursive, self.lifecycle)
        before = len(self.settler)
        for path, st in found:
            self.consider(path, st)
        if folder in self.roots:
            log.info(
                "scanned %s: %d image files, %d not sent yet", folder, len(found), len(self.settler) - before
            )

    # Sending ------------------------------------------------------------------------------

    async def _send_settled(self) -> None:
        settled = self.settler.pop_settled()
        entries = []
        for s in settled:
            root = self.root_of(s.path)
            if root is None or self.journal.known(s.path, s.size, s.mtime_ns) is not None:
                continue
            image_id = new_image_id()
            sent_path = s.path
            if self.lifecycle:
                sent_path = processing_path(root, s.path, image_id)
            entries.append(
                Entry(
                    path=str(s.path),
                    size=s.size,
                    mtime_ns=s.mtime_ns,
                    image_id=image_id,
                    sent_path=str(sent_path),
                    root=str(root),
                )
            )
        if entries:
            self.journal.add(entries)  # ids are fixed before anything leaves this process
            await self._publish(entries)

    async def _publish(self, entries: list[Entry]) -> None:
        ready = [e for e in entries if to_processing(e, self.journal)]
        for start in range(0, len(ready), PUBLISH_CHUNK):
            chunk = ready[start : start + PUBLISH_CHUNK]
            if self.bucket is not None:
                chunk = await self._upload_with_retry(chunk)
                if not chunk:
                    continue
            messages = [self.message(e) for e in chunk]
            if self.mover is not None:
                self.mover.expect(chunk)
            await self._publish_with_retry(messages)
            # A fast result may already have finished a lifecycle row: only pending rows move on.
            ids = [e.image_id for e in chunk]
            self.journal.mark(ids, "sent", only_from=("pending",), sent_at=time.time())
            self.sent += len(chunk)
            for e in chunk:
                log.info("sent %s as %s", e.sent_path, e.image_id)

    async def _publish_with_retry(self, messages: list[ImagePath]) -> None:
        # Broker away: the rows stay pending meanwhile (imgflow/retry.py, retried whatever the error).
        await retry(f"publishing {len(messages)} images", partial(self.publish, messages), transient=_always)

    def object_uri(self, entry: Entry) -> str:
        """Where a file goes in the bucket: named by its image id, so a resend writes the same object."""
        return f"{self.bucket}/{entry.image_id}{Path(entry.path).suffix.lower()}"

    async def _upload_with_retry(self, entries: list[Entry]) -> list[Entry]:
        """Put each file in the bucket; the ones that went (a file that is not a regular file
        inside the watched folders, or too large, is abandoned: never read, never sent)."""
        from imgflow.objects import write_object
        from imgflow.settings import get_settings

        limit = get_settings().max_file_bytes

        def read(entry: Entry) -> bytes | None:
            try:  # the same check as the decode stage's, on the open file (models/safeio.py)
                return read_regular(entry.sent_path, limit, roots=self.roots)
            except ReadRefused as exc:
                log.warning("not uploading %s: %s", entry.sent_path, exc.message)
                return None

        contents = await asyncio.to_thread(lambda: [(e, read(e)) for e in entries])
        refused = [e.image_id for e, data in contents if data is None]
        if refused:  # the journal is this thread's (SQLite)
            self.journal.mark(refused, "abandoned")
        ready = [(e, data) for e, data in contents if data is not None]

        def upload() -> None:
            for e, data in ready:
                write_object(self.object_uri(e), data)

        await retry(
            f"putting {len(ready)} images in {self.bucket}",
            partial(asyncio.to_thread, upload),
            transient=_always,
        )
        return [e for e, _ in ready]

    def message(self, entry: Entry) -> ImagePath:
        root = Path(entry.root)
        attrs: dict[str, Any] = {"watch_root": entry.root}
        with contextlib.suppress(ValueError):
            attrs["relative_path"] = Path(entry.path).relative_to(root).as_posix()
        where: Path | str = self.object_uri(entry) if self.bucket is not None else Path(entry.sent_path)
        return path_message(where, self.source, attrs=attrs, image_id=entry.image_id)

    async def _resume_pending(self) -> None:
        """Rows written before a crash but never acknowledged: resend with the same ids."""
        resend: list[Entry] = []
        for entry in self.journal.in_state("pending"):
            src, dest = Path(entry.path), Path(entry.sent_path)
            st = stat_file(src)
            same = st is not None and (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns)
            if (entry.lifecycle and dest.exists()) or same:
                resend.append(entry)
            else:
                log.warning("%s changed or vanished before it was sent; it counts as new", entry.path)
                self.journal.mark([entry.image_id], "abandoned")
        if resend:
            log.info("resending %d images that were not acknowledged before the last stop", len(resend))
            await self._publish(resend)


def _always(exc: BaseException) -> bool:
    """A store or broker away: retried whatever the error (the rows stay pending meanwhile)."""
    return True


def _gone(rows: list[tuple[int, Entry]]) -> list[int]:
    """The rowids whose file is no longer at its path as it was (missing, or another file)."""
    gone = []
    for rowid, entry in rows:
        try:
            st = os.stat(entry.path)
        except OSError:
            gone.append(rowid)
            continue
        if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
            gone.append(rowid)
    return gone
