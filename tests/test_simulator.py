"""The simulator's timing, as pure functions and with a fake clock (no real sleeping)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from simulator.simulator import Pattern, copy_into, plan, run, schedule

IMAGES = [Path(f"img-{i}.jpg") for i in range(10)]


class FakeClock:
    """``clock`` and ``sleep`` for :func:`run`: sleeping advances time instantly."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def first(pattern: Pattern, n: int) -> list[tuple[float, int]]:
    return list(itertools.islice(schedule(pattern), n))


def test_steady_sends_bursts_at_the_average_rate():
    assert first(Pattern(rate=4, burst=2), 4) == [(0.0, 2), (0.5, 2), (1.0, 2), (1.5, 2)]
    assert first(Pattern(rate=0), 3) == [(0.0, 1), (0.0, 1), (0.0, 1)]  # unpaced


def test_poisson_keeps_the_average_rate_and_is_reproducible():
    times = [t for t, _ in first(Pattern(kind="poisson", rate=10, seed=3), 5001)]
    assert times == [t for t, _ in first(Pattern(kind="poisson", rate=10, seed=3), 5001)]
    assert times != [t for t, _ in first(Pattern(kind="poisson", rate=10, seed=4), 5001)]
    assert times == sorted(times)
    assert 5000 / times[-1] == pytest.approx(10, rel=0.1)
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(times)}
    assert len(gaps) > 100  # not evenly spaced


def test_spikes_add_periodic_bursts_to_a_base_rate():
    sends = first(Pattern(kind="spikes", rate=2, spike_every=1.5, spike_size=5), 8)
    assert sends == [(0.0, 1), (0.5, 1), (1.0, 1), (1.5, 1), (1.5, 5), (2.0, 1), (2.5, 1), (3.0, 1)]
    only = first(Pattern(kind="spikes", rate=0, spike_every=2, spike_size=3), 3)
    assert only == [(2.0, 3), (4.0, 3), (6.0, 3)]


def test_ramp_rises_to_the_peak_rate_then_holds():
    pattern = Pattern(kind="ramp", rate=1, peak_rate=10, ramp_seconds=10)
    times = [t for t, _ in first(pattern, 200)]
    early = sum(1 for t in times if t < 2)
    late = sum(1 for t in times if 10 <= t < 12)
    assert early <= 4 and 19 <= late <= 21  # 10/s once the ramp is over
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(gaps))  # never slows down


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "wave"},
        {"rate": -1},
        {"burst": 0},
        {"kind": "poisson", "rate": 0},
        {"kind": "ramp", "rate": 1},
        {"kind": "spikes", "spike_size": 0},
    ],
)
def test_invalid_patterns_are_refused_readably(kwargs):
    with pytest.raises(ValueError):
        Pattern(**kwargs)


@pytest.mark.parametrize("kind", ["steady", "poisson", "spikes", "ramp"])
def test_every_pattern_describes_itself(kind: str):
    pattern = Pattern(kind=kind, rate=2, peak_rate=8, count=10, duration=5)
    assert pattern.in_words().startswith(kind + ": ") and "until 10 images or 5s" in pattern.in_words()


def test_plan_honours_count_and_looping():
    sends = list(plan(IMAGES, Pattern(rate=10, burst=3, count=25, seed=1)))
    assert [len(b) for _, b in sends] == [3] * 8 + [1]
    flat = [p for _, b in sends for p in b]
    assert len(flat) == 25
    assert set(flat[:10]) == set(IMAGES) and set(flat[10:20]) == set(IMAGES)  # each pass is a shuffle
    assert flat[:10] != flat[10:20]

    once = [p for _, b in plan(IMAGES, Pattern(rate=10, loop=False, shuffle=False)) for p in b]
    assert once == IMAGES
    assert list(plan([], Pattern())) == []


def test_plan_stops_at_the_duration():
    sends = list(plan(IMAGES, Pattern(rate=4, duration=2.0)))
    assert [t for t, _ in sends] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_plan_is_reproducible_with_a_seed():
    a = list(plan(IMAGES, Pattern(count=30, seed=5)))
    assert a == list(plan(IMAGES, Pattern(count=30, seed=5)))
    assert a != list(plan(IMAGES, Pattern(count=30, seed=6)))


async def test_run_sends_each_burst_when_it_is_due():
    clock = FakeClock()
    sent: list[tuple[float, int]] = []

    async def send(paths: list[Path]) -> None:
        sent.append((clock.now - 100.0, len(paths)))

    stats = await run(
        IMAGES,
        Pattern(kind="spikes", rate=1, spike_every=2, spike_size=4, count=12),
        send,
        clock,
        clock.sleep,
    )
    assert sent == [(0.0, 1), (1.0, 1), (2.0, 1), (2.0, 4), (3.0, 1), (4.0, 1), (4.0, 3)]
    assert stats.sent == 12 and stats.sends == 7 and stats.max_lag == 0.0
    assert stats.elapsed == pytest.approx(4.0)


async def test_run_stops_after_the_duration_and_reports_lag_of_a_slow_sender():
    clock = FakeClock()

    async def slow_send(paths: list[Path]) -> None:
        clock.now += 0.5  # each send takes half a second; the schedule wants one every 0.25 s

    stats = await run(IMAGES, Pattern(rate=4, duration=3.0), slow_send, clock, clock.sleep)
    assert stats.sent == 6  # wall-clock duration reached after 6 sends of 0.5 s
    assert stats.max_lag == pytest.approx(1.25)
    assert clock.sleeps == []


async def test_copy_into_writes_complete_files_under_new_names(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(3):
        path = src / f"pic-{i}.jpg"
        path.write_bytes(bytes([i]) * 1000)
        files.append(path)
    dest = tmp_path / "inbox"
    send = copy_into(dest)
    await send(files)
    await send(files[:1])
    copied = sorted(dest.iterdir())
    assert len(copied) == 4
    assert not [p for p in copied if p.name.startswith(".") or p.suffix == ".part"]
    assert sorted(p.read_bytes() for p in copied) == sorted(
        [f.read_bytes() for f in files] + [files[0].read_bytes()]
    )
    assert all(p.name.startswith("pic-") and p.suffix == ".jpg" for p in copied)


def test_run_on_the_real_event_loop_is_quick_when_unpaced():
    sent: list[int] = []

    async def send(paths: list[Path]) -> None:
        sent.append(len(paths))

    stats = asyncio.run(run(IMAGES, Pattern(rate=0, count=50), send))
    assert stats.sent == 50 and sum(sent) == 50
