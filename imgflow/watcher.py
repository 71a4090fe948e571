"""Watched folders: every new, fully written image is published exactly once.

Run by ``faust -A imgflow watch [DIR...]`` (``imgflow/cli/watch.py``): one
watcher process per set of folders, not one per worker, since several workers
watching one folder would each send every file.

**Reacting, not polling.** ``watchfiles.awatch`` delivers the operating
system's notifications (inotify on Linux, FSEvents, ReadDirectoryChangesW).
Between events the loop sleeps until the next file is due, never on a timer.
On network file systems without notifications set ``WATCHFILES_FORCE_POLLING=1``
(the Rust side then scans; our code is unchanged).

**Which files.** Files whose suffix is an image suffix (``.jpg .jpeg .png .gif
.bmp .tif .tiff .webp``, as ``submit`` uses). Hidden names (a dot at the start
of the file or of any folder under the root), ``*.part``, ``*.tmp``,
``*.crdownload``, ``*~`` and other in-progress names are never sent: a writer
that writes ``.cat.jpg.part`` and renames it to ``cat.jpg`` is seen once, on
the rename. A folder moved in whole is scanned (the OS reports only the
folder). Other files are ignored and logged once.

**Fully written.** There is no portable "closed after writing" event (watchfiles
reports added / modified / deleted), so a file is *settled* when its size and
modification time have not changed for ``IMGFLOW_WATCH_SETTLE_SECONDS``
(default 1 s) with no event in between; a file whose modification time is
already that old when first seen (renamed in, or arrived while the watcher was
down) is due at once. Then its ending is checked where the format allows: a
JPEG must end with its EOI marker, a PNG with ``IEND``, a GIF with ``;``, WebP
and BMP must be as long as their header says. A file that does not (a writer
pausing mid-file for longer than the settle time) waits for its next write,
and is sent anyway after ``max(30 s, 10 x settle)`` of quiet, so that a
truncated file becomes a visible failure record rather than a silent gap.

**Sent once, across restarts.** A journal (SQLite, stdlib ``sqlite3``, default
``IMGFLOW_HOME/watcher/journal.sqlite3``) holds one row per file, keyed by
(absolute path, size, mtime_ns). The image id is assigned and written to the
row (state ``pending``) *before* publishing, and the row becomes ``sent`` only
after the broker acknowledged the message. On start the watcher first resends
``pending`` rows with their original ids (the chain is idempotent by
``image_id``, so a crash between the ack and the journal write cannot make a
duplicate result), then scans every folder and sends what is not in the
journal: files that arrived while it was down. A file modified in place or
renamed is a new file (new key). An exclusive lock (``journal.sqlite3.lock``)
stops a second watcher from using the same journal.

**Lifecycle** (``--lifecycle`` / ``IMGFLOW_WATCH_LIFECYCLE=true``, off by
default), like the seed's folders: a settled ``ROOT/a/cat.jpg`` is moved to
``ROOT/processing/a/cat.jpg`` and that path is published; when its result
arrives on ``imgflow-stored`` / ``imgflow-failed`` the file moves on to
``ROOT/processed/a/cat.jpg`` or ``ROOT/failed/a/cat.jpg`` (a clash of names
adds ``-<id prefix>``) and the ``path`` of its MongoDB documents is updated.
Results that arrived while the watcher was down are found in MongoDB on start.
The three folders under each root are never watched. The ``failures`` document
of a failed image may keep the ``processing/`` path if it is written after the
move.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.ingest import ResultWatch, path_message
from imgflow.records import ImagePath, new_image_id
from simulator.dataset import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

IN_PROGRESS_SUFFIXES = frozenset(
    {".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp", ".lock", ".filepart"}
)
LIFECYCLE_DIRS = ("processing", "processed", "failed")
MIN_INCOMPLETE_GRACE = 30.0
PUBLISH_CHUNK = 100


# Which paths ------------------------------------------------------------------------------


def relative_parts(path: Path, root: Path) -> tuple[str, ...] | None:
    try:
        return path.relative_to(root).parts
    except ValueError:
        return None


def skipped_dir(parts: tuple[str, ...], lifecycle: bool) -> bool:
    """A folder under a root (given by its parts) whose contents are never sent."""
    if any(p.startswith(".") for p in parts):
        return True
    return lifecycle and bool(parts) and parts[0] in LIFECYCLE_DIRS


def in_progress_name(name: str) -> bool:
    """Names writers use while a file is incomplete."""
    lower = name.lower()
    return (
        name.startswith(".")
        or lower.endswith("~")
        or Path(lower).suffix in IN_PROGRESS_SUFFIXES
        or lower.startswith("~$")
    )


def is_candidate(path: Path, root: Path, lifecycle: bool) -> bool:
    """Whether a file under ``root`` is an image the watcher should send."""
    parts = relative_parts(path, root)
    if not parts or skipped_dir(parts[:-1], lifecycle) or in_progress_name(parts[-1]):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES


def looks_complete(head: bytes, tail: bytes, size: int) -> bool | None:
    """Whether a file's ending matches its format: True, False, or None (cannot tell)."""
    if size == 0:
        return False
    if head.startswith(b"\xff\xd8\xff"):  # JPEG: EOI marker, possibly zero-padded
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return tail.endswith(b"IEND\xaeB`\x82")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return tail.endswith(b";")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and len(head) >= 12:
        return size >= int.from_bytes(head[4:8], "little") + 8
    if head.startswith(b"BM") and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return size >= declared if declared else None
    return None


def file_complete(path: Path, size: int) -> bool | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            fh.seek(max(0, size - 64))
            tail = fh.read(64)
    except OSError:
        return None
    return looks_complete(head, tail, size)


# Settling ---------------------------------------------------------------------------------


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    due: float
    incomplete_since: float | None = None


@dataclass(frozen=True)
class Settled:
    path: Path
    size: int
    mtime_ns: int
    complete: bool | None


StatFn = Callable[[Path], os.stat_result | None]
CompleteFn = Callable[[Path, int], bool | None]


def stat_file(path: Path) -> os.stat_result | None:
    try:
        st = path.stat()
    except OSError:
        return None
    import stat as _stat

    return st if _stat.S_ISREG(st.st_mode) else None


class Settler:
    """Files seen but not yet sent, each with the time it is due to be checked.

    Pure bookkeeping with injected clocks: ``clock`` (monotonic, for due times)
    and ``wall`` (to compare with file modification times).
    """

    def __init__(
        self,
        settle: float,
        grace: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settle = settle
        self.grace = grace if grace is not None else max(MIN_INCOMPLETE_GRACE, 10 * settle)
        self.clock = clock
        self.wall = wall
        self.seen: dict[Path, _Seen] = {}

    def __len__(self) -> int:
        return len(self.seen)

    def touch(self, path: Path, st: os.stat_result) -> None:
        """A file was created or written: (re)start its settle time."""
        now = self.clock()
        previous = self.seen.get(path)
        quiet_for = self.wall() - st.st_mtime_ns / 1e9
        due = now if previous is None and quiet_for >= self.settle else now + self.settle
        self.seen[path] = _Seen(
            st.st_size, st.st_mtime_ns, due, previous.incomplete_since if previous else None
        )

    def forget(self, path: Path) -> None:
        self.seen.pop(path, None)
        prefix = str(path) + os.sep
        for other in [p for p in self.seen if str(p).startswith(prefix)]:
            del self.seen[other]

    def next_due(self) -> float | None:
        return min((s.due for s in self.seen.values()), default=None)

    def pop_settled(self, stat: StatFn = stat_file, complete: CompleteFn = file_complete) -> list[Settled]:
        """Files that are due and have not changed since they were last seen."""
        now = self.clock()
        settled: list[Settled] = []
        for path, seen in list(self.seen.items()):
            if seen.due > now:
                continue
            st = stat(path)
            if st is None:  # deleted or replaced by a folder
                del self.seen[path]
                continue
            if (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                seen.size, seen.mtime_ns, seen.due = st.st_size, st.st_mtime_ns, now + self.settle
                continue
            ok = complete(path, st.st_size)
            if ok is False:
                if seen.incomplete_since is None:
                    seen.incomplete_since = now
                if now - seen.incomplete_since < self.grace:
                    # The next write re-arms it; if none comes, send after the grace time.
                    seen.due = seen.incomplete_since + self.grace
                    continue
                log.warning("%s looks incomplete after %.0fs without writes; sending it", path, self.grace)
            del self.seen[path]
            settled.append(Settled(path, st.st_size, st.st_mtime_ns, ok))
        return settled


# Journal ----------------------------------------------------------------------------------


class JournalLocked(RuntimeError):
    """Another watcher process holds the journal."""


@dataclass
class Entry:
    path: str  # where the file was found
    size: int
    mtime_ns: int
    image_id: str
    sent_path: str  # the path published (differs in lifecycle mode)
    root: str
    state: str = "pending"  # pending -> sent [-> stored | failed] ; or abandoned
    seen_at: float = field(default_factory=time.time)
    sent_at: float | None = None
    final_path: str | None = None

    @property
    def lifecycle(self) -> bool:
        return self.sent_path != self.path


_COLUMNS = ("path", "size", "mtime_ns", "image_id", "sent_path", "root", "state", "seen_at", "sent_at")
_COLUMNS += ("final_path",)


class Journal:
    """What was sent, keyed by (path, size, mtime_ns); SQLite, one process at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(str(path) + ".lock", "a+")  # noqa: SIM115 (held for the journal's life)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "?"
            self._lock.close()
            raise JournalLocked(
                f"another watcher (pid {holder}) is using {path}; run one watcher for all folders "
                "(several DIR arguments) or give each its own --journal"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            """CREATE TABLE IF NOT EXISTS files (
                path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                image_id TEXT NOT NULL UNIQUE, sent_path TEXT NOT NULL, root TEXT NOT NULL,
                state TEXT NOT NULL, seen_at REAL NOT NULL, sent_at REAL, final_path TEXT,
                PRIMARY KEY (path, size, mtime_ns))"""
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS files_state ON files (state)")

    def close(self) -> None:
        self.db.close()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[Entry]:
        cur = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM files {sql}", tuple(args))
        return [Entry(**dict(zip(_COLUMNS, row, strict=True))) for row in cur.fetchall()]

    def known(self, path: Path, size: int, mtime_ns: int) -> Entry | None:
        rows = self._rows("WHERE path = ? AND size = ? AND mtime_ns = ?", (str(path), size, mtime_ns))
        return rows[0] if rows else None

    def by_id(self, image_id: str) -> Entry | None:
        rows = self._rows("WHERE image_id = ?", (image_id,))
        return rows[0] if rows else None

    def in_state(self, state: str) -> list[Entry]:
        return self._rows("WHERE state = ? ORDER BY seen_at", (state,))

    def add(self, entries: list[Entry]) -> None:
        """Record files about to be sent (state ``pending``), ids included, in one commit."""
        with self.db:
            self.db.executemany(
                f"INSERT INTO files ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                [tuple(getattr(e, c) for c in _COLUMNS) for e in entries],
            )

    def mark(
        self, image_ids: Iterable[str], state: str, *, only_from: tuple[str, ...] = (), **fields: Any
    ) -> None:
        """Move rows to ``state`` (only rows now in one of ``only_from``, if given)."""
        sets = ", ".join(["state = ?", *(f"{k} = ?" for k in fields)])
        where = "image_id = ?"
        if only_from:
            where += f" AND state IN ({', '.join('?' * len(only_from))})"
        with self.db:
            self.db.executemany(
                f"UPDATE files SET {sets} WHERE {where}",
                [(state, *fields.values(), image_id, *only_from) for image_id in image_ids],
            )

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())


# The watcher ------------------------------------------------------------------------------

Publish = Callable[[list[ImagePath]], Awaitable[Any]]


async def _default_publish(messages: list[ImagePath]) -> Any:
    from imgflow.ingest import submit

    return await submit(messages)


class FolderWatcher:
    """Watches ``roots`` and publishes each settled image once (see the module docstring)."""

    def __init__(
        self,
        roots: list[Path],
        journal: Journal,
        *,
        recursive: bool = True,
        settle: float = 1.0,
        lifecycle: bool = False,
        source: str = "watch",
        publish: Publish = _default_publish,
        results: ResultWatch | None = None,
        store: Any = None,
        debounce_ms: int = 400,
    ) -> None:
        self.roots = dedupe_roots([r.resolve() for r in roots], recursive)
        self.journal = journal
        self.recursive = recursive
        self.lifecycle = lifecycle
        self.source = source
        self.publish = publish
        self.results = results
        self.store = store
        self.debounce_ms = debounce_ms
        self.settler = Settler(settle)
        self.sent = 0
        self._ignored: set[Path] = set()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()  # set once the start-up scan is done
        if lifecycle and results is None:
            raise ValueError("lifecycle needs a ResultWatch")

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
            if self.lifecycle:
                await self.results.start()
                await self._reconcile_results()
                follower = asyncio.create_task(self._follow_results(), name="imgflow-watch-results")
            await self._resume_pending()
            for root in self.roots:
                await self.scan(root)
            self.ready.set()
            while not self._stop.is_set():
                await self._send_settled()
                due = self.settler.next_due()
                timeout = None if due is None else max(0.0, due - time.monotonic())
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
            if self.results is not None:
                await self.results.stop()

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
        found = await asyncio.to_thread(_walk, folder, root, self.recursive, self.lifecycle)
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
                sent_path = free_name(root / "processing" / s.path.relative_to(root), image_id)
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
        ready: list[Entry] = []
        for entry in entries:
            if entry.lifecycle and not Path(entry.sent_path).exists():
                try:
                    move(Path(entry.path), Path(entry.sent_path))
                except OSError as exc:
                    log.error("cannot move %s to %s: %s", entry.path, entry.sent_path, exc)
                    self.journal.mark([entry.image_id], "abandoned")
                    continue
            ready.append(entry)
        for start in range(0, len(ready), PUBLISH_CHUNK):
            chunk = ready[start : start + PUBLISH_CHUNK]
            messages = [self.message(e) for e in chunk]
            if self.results is not None:
                self.results.expect(e.image_id for e in chunk if e.lifecycle)
            await self._publish_with_retry(messages)
            # A fast result may already have finished a lifecycle row: only pending rows move on.
            ids = [e.image_id for e in chunk]
            self.journal.mark(ids, "sent", only_from=("pending",), sent_at=time.time())
            self.sent += len(chunk)
            for e in chunk:
                log.info("sent %s as %s", e.sent_path, e.image_id)

    async def _publish_with_retry(self, messages: list[ImagePath]) -> None:
        delay = 0.5
        while True:
            try:
                await self.publish(messages)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away: the rows stay pending, retry with backoff
                log.warning("publishing %d images failed, retrying in %.1fs: %s", len(messages), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def message(self, entry: Entry) -> ImagePath:
        root = Path(entry.root)
        attrs: dict[str, Any] = {"watch_root": entry.root}
        with contextlib.suppress(ValueError):
            attrs["relative_path"] = Path(entry.path).relative_to(root).as_posix()
        return path_message(Path(entry.sent_path), self.source, attrs=attrs, image_id=entry.image_id)

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

    # Lifecycle ----------------------------------------------------------------------------

    async def _reconcile_results(self) -> None:
        """Results that arrived while the watcher was down, from MongoDB."""
        waiting = {e.image_id: e for e in self.journal.in_state("sent") if e.lifecycle}
        if not waiting:
            return
        assert self.results is not None
        self.results.expect(waiting)
        if self.store is None:
            return
        ids = list(waiting)
        done: dict[str, str] = {}
        for name, status in (("failures", "failed"), ("images", "stored")):
            async for doc in self.store.db[name].find({"_id": {"$in": ids}}, {"_id": 1}):
                done[doc["_id"]] = status
        for image_id, status in done.items():
            await self._finish(waiting[image_id], status)

    async def _follow_results(self) -> None:
        assert self.results is not None
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
                    await self._finish(entry, outcome.status)

    async def _finish(self, entry: Entry, status: str) -> None:
        """Move a processed file on to ``processed/`` or ``failed/``."""
        root = Path(entry.root)
        src = Path(entry.sent_path)
        folder = "processed" if status == "stored" else "failed"
        try:
            rel = src.relative_to(root / "processing")
        except ValueError:
            rel = Path(src.name)
        dest = free_name(root / folder / rel, entry.image_id)
        try:
            move(src, dest)
        except FileNotFoundError:
            log.warning("%s is gone; cannot move it to %s/", src, folder)
            dest = None
        except OSError as exc:
            log.error("cannot move %s to %s: %s", src, dest, exc)
            dest = None
        if dest is not None:
            log.info("%s %s -> %s", status, entry.image_id, dest)
            await self._repoint(entry.image_id, dest)
        self.journal.mark([entry.image_id], status, final_path=str(dest) if dest else None)
        if self.results is not None:
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


def _walk(folder: Path, root: Path, recursive: bool, lifecycle: bool) -> list[tuple[Path, os.stat_result]]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        parts = relative_parts(here, root) or ()
        if skipped_dir(parts, lifecycle):
            dirnames.clear()
            continue
        if not recursive:
            dirnames.clear()
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if is_candidate(path, root, lifecycle) and (st := stat_file(path)) is not None:
                found.append((path, st))
    return found


def dedupe_roots(roots: list[Path], recursive: bool) -> list[Path]:
    """Drop repeated roots and, when recursive, roots inside another root."""
    unique = list(dict.fromkeys(roots))
    if not recursive:
        return unique
    return [r for r in unique if not any(o != r and o in r.parents for o in unique)]


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
