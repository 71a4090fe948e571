"""When a file counts as fully written: quiet for the settle time, then complete-looking.

There is no portable "closed after writing" event, so :class:`Settler` keeps
each file seen but not yet sent with the time it is due to be checked (see the
package docstring). Pure bookkeeping with injected clocks, stat and
completeness checks, so it is tested without sleeping or files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sources.watcher.checks import file_complete, stat_file

log = logging.getLogger(__name__)

#: A file that never looks complete is sent after max(this, 10 x settle) of quiet, so a truncated
#: file becomes a visible failure record rather than a silent gap.
MIN_INCOMPLETE_GRACE = 30.0


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    due: float
    incomplete_since: float | None = None


@dataclass(frozen=True)
class Settled:
    """A file that is due and unchanged: what the watcher sends."""

    path: Path
    size: int
    mtime_ns: int
    complete: bool | None


StatFn = Callable[[Path], os.stat_result | None]
CompleteFn = Callable[[Path, int], bool | None]


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
