"""What the watcher sent, across restarts: one SQLite row per file, one process at a time.

Rows are keyed by (absolute path, size, mtime_ns). The image id is written
(state ``pending``) *before* publishing and the row becomes ``sent`` only after
the broker acknowledged, so a crash in between resends with the same id (see
the package docstring). An exclusive lock file stops a second watcher.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class JournalLocked(RuntimeError):
    """Another watcher process holds the journal."""


@dataclass
class Entry:
    """One file the watcher found, with the id it was (or is about to be) sent under."""

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


_COLUMNS: tuple[str, ...] = (
    *("path", "size", "mtime_ns", "image_id", "sent_path", "root", "state", "seen_at", "sent_at"),
    "final_path",
)


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

    #: States a row can be pruned from once its file has left its path: nothing more will
    #: happen to it (``pending`` is resent on start; a lifecycle ``sent`` awaits its result).
    DONE = ("sent", "stored", "failed", "abandoned")

    def done_rows(self, after: int = 0, limit: int = 1000) -> list[tuple[int, Entry]]:
        """Rows that are done with (see :attr:`DONE`), by rowid after ``after``: (rowid, entry)."""
        cur = self.db.execute(
            f"SELECT rowid, {', '.join(_COLUMNS)} FROM files WHERE rowid > ? "
            f"AND state IN ({', '.join('?' * len(self.DONE))}) ORDER BY rowid LIMIT ?",
            (after, *self.DONE, limit),
        )
        rows = [(row[0], Entry(**dict(zip(_COLUMNS, row[1:], strict=True)))) for row in cur.fetchall()]
        return [(rowid, e) for rowid, e in rows if not (e.state == "sent" and e.lifecycle)]

    def forget(self, rowids: Iterable[int]) -> int:
        """Delete rows (their files are gone: nothing of them can be seen or sent again)."""
        with self.db:
            cur = self.db.executemany("DELETE FROM files WHERE rowid = ?", [(r,) for r in rowids])
        return cur.rowcount

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
