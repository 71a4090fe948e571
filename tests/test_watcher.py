"""The folder watcher's decisions: which files, when fully written, what was sent.

Pure parts run with fake clocks. The last tests run a real ``FolderWatcher`` on
real OS notifications with a sender that records messages (the broker path is
covered end to end in ``test_ingest_e2e.py``).
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from imgflow.records import ImagePath
from sources.watcher import (
    Entry,
    FolderWatcher,
    Journal,
    JournalLocked,
    Settler,
    dedupe_roots,
    free_name,
    is_candidate,
    looks_complete,
)


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buf, format=fmt)
    return buf.getvalue()


def complete(data: bytes) -> bool | None:
    return looks_complete(data[:16], data[-64:], len(data))


# Which files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "lifecycle", "expected"),
    [
        ("cat.jpg", False, True),
        ("a/b/cat.JPEG", False, True),
        ("cat.png", False, True),
        ("cat.webp", False, True),
        ("notes.txt", False, False),
        ("cat", False, False),
        (".cat.jpg", False, False),  # hidden: a writer's temporary name
        (".cat.jpg.part", False, False),
        ("cat.jpg.part", False, False),
        ("cat.jpg.tmp", False, False),
        ("cat.jpg.crdownload", False, False),
        ("cat.jpg~", False, False),
        (".staging/cat.jpg", False, False),  # inside a hidden folder
        ("processing/cat.jpg", False, True),
        ("processing/cat.jpg", True, False),  # lifecycle folders are never watched
        ("processed/a/cat.jpg", True, False),
        ("failed/cat.jpg", True, False),
        ("sub/processing/cat.jpg", True, True),  # only directly under the root
    ],
)
def test_which_files_are_candidates(rel: str, lifecycle: bool, expected: bool):
    root = Path("/data/inbox")
    assert is_candidate(root / rel, root, lifecycle) is expected


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP"])
def test_complete_files_look_complete_and_truncated_ones_do_not(fmt: str):
    data = image_bytes(fmt)
    assert complete(data) is True
    assert complete(data[: len(data) // 2]) is False
    assert complete(data[:-1]) is False


def test_completeness_edge_cases():
    jpeg = image_bytes("JPEG")
    assert complete(jpeg + b"\x00" * 10) is True  # zero padding after EOI
    assert complete(b"") is False
    assert complete(image_bytes("TIFF")) is None  # cannot tell: settle time alone decides
    assert complete(b"hello, world") is None


# Settling ---------------------------------------------------------------------------------


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeStat:
    def __init__(self, size: int, mtime: float) -> None:
        self.st_size = size
        self.st_mtime_ns = int(mtime * 1e9)


def settler(clocks: Clocks, settle: float = 1.0, grace: float = 30.0) -> Settler:
    return Settler(settle, grace, clock=lambda: clocks.mono, wall=lambda: clocks.wall)


def test_a_file_settles_after_a_quiet_period():
    clocks = Clocks()
    s = settler(clocks)
    files = {Path("a.jpg"): FakeStat(100, clocks.wall)}
    s.touch(Path("a.jpg"), files[Path("a.jpg")])
    assert s.next_due() == clocks.mono + 1.0
    clocks.advance(0.5)
    assert s.pop_settled(files.get, lambda p, n: True) == []
    clocks.advance(0.5)
    (done,) = s.pop_settled(files.get, lambda p, n: True)
    assert (done.path, done.size) == (Path("a.jpg"), 100)
    assert len(s) == 0


def test_a_write_restarts_the_quiet_period():
    clocks = Clocks()
    s = settler(clocks)
    path = Path("a.jpg")
    files = {path: FakeStat(100, clocks.wall)}
    s.touch(path, files[path])
    clocks.advance(0.9)
    files[path] = FakeStat(200, clocks.wall)
    s.touch(path, files[path])
    clocks.advance(0.9)
    assert s.pop_settled(files.get, lambda p, n: True) == []
    clocks.advance(0.1)
    assert [d.size for d in s.pop_settled(files.get, lambda p, n: True)] == [200]


def test_a_change_without_an_event_is_noticed_when_due():
    clocks = Clocks()
    s = settler(clocks)
    path = Path("a.jpg")
    files = {path: FakeStat(100, clocks.wall)}
    s.touch(path, files[path])
    files[path] = FakeStat(150, clocks.wall + 0.5)  # grew, event coalesced away
    clocks.advance(1.0)
    assert s.pop_settled(files.get, lambda p, n: True) == []
    assert s.next_due() == clocks.mono + 1.0
    clocks.advance(1.0)
    assert len(s.pop_settled(files.get, lambda p, n: True)) == 1


def test_an_old_file_is_due_at_once():
    """Renamed in or arrived while the watcher was down: nothing has written it for a while."""
    clocks = Clocks()
    s = settler(clocks)
    path = Path("old.jpg")
    files = {path: FakeStat(100, clocks.wall - 60)}
    s.touch(path, files[path])
    assert s.next_due() == clocks.mono
    assert len(s.pop_settled(files.get, lambda p, n: True)) == 1


def test_an_incomplete_file_waits_for_its_next_write_or_the_grace_time():
    clocks = Clocks()
    s = settler(clocks, settle=1.0, grace=30.0)
    path = Path("slow.jpg")
    files = {path: FakeStat(100, clocks.wall)}
    is_complete = {path: False}
    s.touch(path, files[path])
    clocks.advance(1.0)
    assert s.pop_settled(files.get, lambda p, n: is_complete[p]) == []
    assert s.next_due() == clocks.mono + 30.0  # no polling meanwhile: the next write re-arms it
    clocks.advance(5.0)
    files[path] = FakeStat(300, clocks.wall)
    is_complete[path] = True
    s.touch(path, files[path])
    clocks.advance(1.0)
    assert [d.size for d in s.pop_settled(files.get, lambda p, n: is_complete[p])] == [300]

    # Never completed: sent after the grace time, so the failure becomes visible.
    s.touch(Path("stuck.jpg"), FakeStat(10, clocks.wall))
    stuck = {Path("stuck.jpg"): FakeStat(10, clocks.wall)}
    clocks.advance(1.0)
    assert s.pop_settled(stuck.get, lambda p, n: False) == []
    clocks.advance(30.0)
    (done,) = s.pop_settled(stuck.get, lambda p, n: False)
    assert done.complete is False


def test_deleted_files_and_folders_are_forgotten():
    clocks = Clocks()
    s = settler(clocks)
    for name in ("a.jpg", "d/b.jpg", "d/e/c.jpg", "dd.jpg"):
        s.touch(Path(name), FakeStat(1, clocks.wall))
    s.forget(Path("d"))
    assert sorted(map(str, s.seen)) == ["a.jpg", "dd.jpg"]
    clocks.advance(1.0)
    assert s.pop_settled(lambda p: None, lambda p, n: True) == []  # vanished before due
    assert len(s) == 0


# Journal ----------------------------------------------------------------------------------


def entry(path: str, image_id: str, size: int = 10, mtime_ns: int = 1) -> Entry:
    return Entry(path=path, size=size, mtime_ns=mtime_ns, image_id=image_id, sent_path=path, root="/r")


def test_journal_records_files_by_path_size_and_mtime(tmp_path: Path):
    journal = Journal(tmp_path / "j.sqlite3")
    journal.add([entry("/r/a.jpg", "id-a"), entry("/r/b.jpg", "id-b")])
    journal.mark(["id-a"], "sent", only_from=("pending",), sent_at=123.0)
    assert (known := journal.known(Path("/r/a.jpg"), 10, 1)) is not None and known.state == "sent"
    assert journal.known(Path("/r/a.jpg"), 11, 1) is None  # rewritten: a new file
    assert journal.known(Path("/r/a.jpg"), 10, 2) is None
    assert (sent := journal.by_id("id-a")) is not None and sent.sent_at == 123.0
    journal.mark(["id-a"], "pending", only_from=("pending",))  # not pending: unchanged
    assert (still := journal.by_id("id-a")) is not None and still.state == "sent"
    assert journal.counts() == {"pending": 1, "sent": 1}
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite3")
    assert [e.image_id for e in reopened.in_state("pending")] == ["id-b"]
    reopened.close()


def test_one_watcher_per_journal(tmp_path: Path):
    journal = Journal(tmp_path / "j.sqlite3")
    with pytest.raises(JournalLocked, match=f"pid {os.getpid()}"):
        Journal(tmp_path / "j.sqlite3")
    journal.close()
    Journal(tmp_path / "j.sqlite3").close()


def test_roots_and_names():
    assert dedupe_roots([Path("/a"), Path("/a/b"), Path("/c"), Path("/a")], True) == [Path("/a"), Path("/c")]
    assert dedupe_roots([Path("/a"), Path("/a/b")], False) == [Path("/a"), Path("/a/b")]


def test_free_name_never_overwrites(tmp_path: Path):
    assert free_name(tmp_path / "cat.jpg", "abcdef123456") == tmp_path / "cat.jpg"
    (tmp_path / "cat.jpg").write_bytes(b"x")
    assert free_name(tmp_path / "cat.jpg", "abcdef123456") == tmp_path / "cat-abcdef12.jpg"


# A real watcher on real file-system events -------------------------------------------------


class Recorder:
    """A sender that records what would be published."""

    def __init__(self, fail_first: int = 0) -> None:
        self.messages: list[ImagePath] = []
        self.fail_first = fail_first
        self.changed = asyncio.Event()

    async def __call__(self, messages: list[ImagePath]) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise ConnectionError("broker away")
        self.messages += messages
        self.changed.set()

    async def wait_for(self, n: int, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < n:
                self.changed.clear()
                await self.changed.wait()

    @property
    def names(self) -> list[str]:
        return sorted(Path(m.path).name for m in self.messages)


async def stop(watcher: FolderWatcher, task: asyncio.Task) -> None:
    watcher.stop()
    await asyncio.wait_for(task, 10)


async def started(watcher: FolderWatcher) -> asyncio.Task:
    task = asyncio.create_task(watcher.run())
    ready = asyncio.create_task(watcher.ready.wait())
    await asyncio.wait([task, ready], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped it
    assert watcher.ready.is_set()
    return task


async def test_watcher_sends_each_file_once_and_catches_up_after_a_restart(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    jpeg = image_bytes("JPEG")
    (inbox / "before.jpg").write_bytes(jpeg)  # arrived before the watcher started
    sender = Recorder(fail_first=1)  # the first publish fails: retried, not lost
    journal = Journal(tmp_path / "j.sqlite3")
    watcher = FolderWatcher([inbox], journal, settle=0.2, publish=sender)
    task = await started(watcher)
    await sender.wait_for(1)
    (inbox / "a.jpg").write_bytes(jpeg)
    (inbox / ".b.jpg.part").write_bytes(jpeg)
    (inbox / ".b.jpg.part").rename(inbox / "b.jpg")
    (inbox / "notes.txt").write_text("no")
    half = len(jpeg) // 2
    with open(inbox / "slow.jpg", "wb") as fh:  # pauses longer than the settle time
        fh.write(jpeg[:half])
        fh.flush()
        await asyncio.sleep(0.6)
        fh.write(jpeg[half:])
    await sender.wait_for(4)
    os.utime(inbox / "a.jpg", ns=(time.time_ns(), (inbox / "a.jpg").stat().st_mtime_ns))  # atime only
    await asyncio.sleep(0.5)
    await stop(watcher, task)
    journal.close()
    assert sender.names == ["a.jpg", "b.jpg", "before.jpg", "slow.jpg"]
    slow = next(m for m in sender.messages if m.path.endswith("slow.jpg"))
    assert Path(slow.path).stat().st_size == len(jpeg)
    assert {m.source for m in sender.messages} == {"watch"}

    # Down: two files arrive, one is rewritten. Up again: those three, nothing else.
    (inbox / "c.jpg").write_bytes(jpeg)
    (inbox / "sub").mkdir()
    (inbox / "sub" / "d.png").write_bytes(image_bytes("PNG"))
    (inbox / "a.jpg").write_bytes(jpeg + b"\x00")
    journal = Journal(tmp_path / "j.sqlite3")
    again = Recorder()
    watcher = FolderWatcher([inbox], journal, settle=0.2, publish=again)
    task = await started(watcher)
    await again.wait_for(3)
    await asyncio.sleep(0.5)
    await stop(watcher, task)
    assert again.names == ["a.jpg", "c.jpg", "d.png"]
    assert next(m for m in again.messages if m.path.endswith("d.png")).attrs["relative_path"] == "sub/d.png"
    # 7 sent; the row of the first a.jpg is forgotten: that file (size, mtime) is gone.
    assert journal.counts() == {"sent": 6}
    journal.close()


async def test_the_journal_forgets_files_that_left_and_keeps_what_a_restart_needs(tmp_path: Path):
    """Bounded by design: about one row per file in the folders, not one per file ever seen."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    journal = Journal(tmp_path / "j.sqlite3")

    def entry(name: str, state: str, *, lifecycle: bool = False, exists: bool = True) -> Entry:
        path = inbox / name
        path.write_bytes(image_bytes("JPEG"))
        st = path.stat()
        if not exists:
            path.unlink()
        sent_path = str(inbox / "processing" / name) if lifecycle else str(path)
        return Entry(str(path), st.st_size, st.st_mtime_ns, f"id-{name}", sent_path, str(inbox), state)

    rows = [
        entry("here.jpg", "sent"),  # still there: a restart must not resend it
        entry("deleted.jpg", "sent", exists=False),
        entry("pending.jpg", "pending", exists=False),  # resent (or abandoned) on start
        entry("waiting.jpg", "sent", lifecycle=True, exists=False),  # moved, awaiting its result
        entry("moved.jpg", "stored", lifecycle=True, exists=False),  # processed/ by lifecycle
        entry("failed.jpg", "failed", lifecycle=True, exists=False),
        entry("replaced.jpg", "sent"),
    ]
    journal.add(rows)
    (inbox / "replaced.jpg").write_bytes(image_bytes("JPEG", (80, 60)))  # another file, same name
    for i in range(2500):  # more than one chunk of rows
        journal.add([Entry(f"/gone/{i}.jpg", 1, 1, f"g{i}", f"/gone/{i}.jpg", "/gone", "sent")])
    watcher = FolderWatcher([inbox], journal, settle=0.2, publish=Recorder())
    assert await watcher.prune_journal() == 4 + 2500
    assert sorted(e.image_id for e in journal._rows("")) == [
        "id-here.jpg",
        "id-pending.jpg",
        "id-waiting.jpg",
    ]
    assert await watcher.prune_journal() == 0
    journal.close()


async def test_an_unacknowledged_send_is_resent_with_the_same_id(tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "a.jpg"
    path.write_bytes(image_bytes("JPEG"))
    st = path.stat()
    journal = Journal(tmp_path / "j.sqlite3")
    # What a crash between "id written" and "broker acked" leaves behind:
    journal.add([Entry(str(path), st.st_size, st.st_mtime_ns, "fixed-id", str(path), str(inbox))])
    sender = Recorder()
    watcher = FolderWatcher([inbox], journal, settle=0.2, publish=sender)
    task = await started(watcher)
    await sender.wait_for(1)
    await asyncio.sleep(0.4)
    await stop(watcher, task)
    assert [m.image_id for m in sender.messages] == ["fixed-id"]
    assert (fixed := journal.by_id("fixed-id")) is not None and fixed.state == "sent"
    journal.close()
