"""``watch``: publish each new, fully written image in watched folders once.

Run exactly one watcher per set of folders (``faust -A imgflow watch``), not
one per worker. How files are chosen, when they count as fully written and
how restarts neither resend nor skip: ``sources/watcher/``. Use ``-l info``
to see one log line per file sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

from faust.cli import argument, option

from cli.command import EXIT_USAGE, command
from imgflow.app import settings
from imgflow.roots import inside_roots


@command(
    argument("dirs", nargs=-1),
    option(
        "--recursive/--no-recursive",
        default=None,
        help="Watch sub-folders too (default: IMGFLOW_WATCH_RECURSIVE, true).",
    ),
    option(
        "--lifecycle/--no-lifecycle",
        default=None,
        help="Move files to processing/, then processed/ or failed/ (default: IMGFLOW_WATCH_LIFECYCLE).",
    ),
    option(
        "--settle",
        type=float,
        default=None,
        help="Seconds without change before a file counts as written (IMGFLOW_WATCH_SETTLE_SECONDS).",
    ),
    option("--journal", default=None, help="Journal file (default: IMGFLOW_HOME/watcher/journal.sqlite3)."),
    option("--source", default="watch", help="Source tag stored with each image."),
)
async def watch(
    self,
    dirs: tuple[str, ...],
    recursive: bool | None,
    lifecycle: bool | None,
    settle: float | None,
    journal: str | None,
    source: str,
) -> None:
    """Watch folders (default: IMGFLOW_WATCH_DIRS) and submit each new image once."""
    from sources.results import ResultWatch
    from sources.watcher import FolderWatcher, Journal, JournalLocked

    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # one line per change batch otherwise
    roots = [Path(d) for d in dirs] or settings.watch_paths
    if not roots:
        self.say("nothing to watch: give folders or set IMGFLOW_WATCH_DIRS", file=self.stderr)
        raise SystemExit(EXIT_USAGE)
    for root in roots:
        if root.exists() and not root.is_dir():
            self.say(f"not a folder: {root}", file=self.stderr)
            raise SystemExit(EXIT_USAGE)
    for root in roots:
        if inside_roots(root, settings.image_root_paths) is None:
            # Workers refuse what they may not read (outside_roots); say so now, not per image.
            self.say(
                f"warning: {root} is outside the image roots; the workers will refuse its images. "
                "Add it to IMGFLOW_WATCH_DIRS or IMGFLOW_IMAGE_ROOTS of the workers.",
                file=self.stderr,
            )
    recursive = settings.watch_recursive if recursive is None else recursive
    lifecycle = settings.watch_lifecycle if lifecycle is None else lifecycle
    settle = settings.watch_settle_seconds if settle is None else settle
    if settle < 0:
        self.say("--settle must be >= 0", file=self.stderr)
        raise SystemExit(EXIT_USAGE)
    journal_path = Path(journal) if journal else settings.home / "watcher" / "journal.sqlite3"
    try:
        jr = Journal(journal_path)
    except JournalLocked as exc:
        self.say(str(exc), file=self.stderr)
        raise SystemExit(EXIT_USAGE) from None

    store = None
    if lifecycle:
        from imgflow.storage import Store

        store = Store(settings.mongo_url, settings.mongo_db)
    watcher = FolderWatcher(
        roots,
        jr,
        recursive=recursive,
        settle=settle,
        lifecycle=lifecycle,
        source=source,
        results=ResultWatch(settings) if lifecycle else None,
        store=store,
        bucket=settings.watch_upload_uri,
    )
    counts = jr.counts()
    self.say(
        f"watching {', '.join(map(str, watcher.roots))}"
        f" ({'recursive' if recursive else 'top level only'}, settle {settle:g}s"
        f"{', lifecycle' if lifecycle else ''}); journal {journal_path}: "
        + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "empty")
    )
    try:
        await watcher.run()
    finally:
        jr.close()
        if store is not None:
            await store.close()
        self.say(f"watcher stopped after sending {watcher.sent} images")
