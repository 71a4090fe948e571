"""Watched folders: every new, fully written image is published exactly once.

Run by ``faust -A imgflow watch [DIR...]`` (``cli/watch.py``): one
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

**Where each part lives**: which files and whether complete in
:mod:`~sources.watcher.checks`, the settle time in
:mod:`~sources.watcher.settle`, the journal in
:mod:`~sources.watcher.journal`, the watcher itself in
:mod:`~sources.watcher.folder_watcher` and the lifecycle folders in
:mod:`~sources.watcher.lifecycle`. Messages go out through
:func:`sources.publish.publish_paths` like every other source's.
"""

from sources.watcher.checks import dedupe_roots, is_candidate, looks_complete
from sources.watcher.folder_watcher import FolderWatcher
from sources.watcher.journal import Entry, Journal, JournalLocked
from sources.watcher.lifecycle import Lifecycle, free_name
from sources.watcher.settle import Settler

__all__ = [
    "Entry",
    "FolderWatcher",
    "Journal",
    "JournalLocked",
    "Lifecycle",
    "Settler",
    "dedupe_roots",
    "free_name",
    "is_candidate",
    "looks_complete",
]
