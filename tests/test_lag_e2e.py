"""The consumer group's lag, as an autoscaler reads it: ``/metrics`` parsed by Prometheus'
own parser and ``/health/``, on a real worker with a backlog (each decode slowed by the
test fault ``IMGFLOW_FAULT_DECODE_SLEEP``, so the backlog lasts long enough to be read)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

import imgflow
from simulator.dataset import write_dataset
from tests.support import Pipeline, path_message, produce_raw, wait_until

pytestmark = pytest.mark.e2e

FAULTS = Path(__file__).parent / "faults"
IMAGES = 24


def scrape(url: str) -> dict[str, dict[tuple[str, str], float]]:
    """Every sample of the lag families: name -> {(topic, partition): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("imgflow_consumer_", "imgflow_build_info")):
                key = (sample.labels.get("topic", ""), sample.labels.get("partition", ""))
                out[sample.name][key] = sample.value
    return out


def build_version(url: str) -> str:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    [sample] = families["imgflow_build_info"].samples
    return sample.labels["version"]


def test_lag_and_the_oldest_unprocessed_age_rise_with_a_backlog_and_fall_to_zero(
    pipeline: Pipeline, tmp_path: Path
):
    worker = pipeline.start_worker(
        PYTHONPATH=f"{FAULTS}:{pipeline.env().get('PYTHONPATH', '')}".rstrip(":"),
        IMGFLOW_FAULT_DECODE_SLEEP="0.5",
        IMGFLOW_DECODE_THREADS="1",
        IMGFLOW_DECODE_BATCH_SIZE="1",  # one at a time: none waits long enough to time out
    )
    worker.wait_ready()
    paths_topic = pipeline.topic("paths")
    idle = scrape(worker.url)
    assert idle["imgflow_consumer_lag_total"][("", "")] == 0
    assert idle["imgflow_build_info"] == {("", ""): 1.0} and build_version(worker.url) == imgflow.__version__
    owned = {p for (t, p) in idle["imgflow_consumer_lag"] if t == paths_topic}
    assert owned == {"0", "1", "2", "3"}  # one worker owns every partition of the paths topic

    dataset = write_dataset(tmp_path / "dataset")[:IMAGES]
    messages = [path_message(p, source="lag") for p in dataset]
    asyncio.run(produce_raw(pipeline.services.bootstrap, paths_topic, messages))

    # ~12 s of decoding: the backlog is read while it lasts. The ages come from a probe in the
    # background (a scrape never waits for it): the first scrape with a lag may not have them.
    def backlog() -> dict | None:
        found = scrape(worker.url)
        lags = {k: v for k, v in found["imgflow_consumer_lag"].items() if k[0] == paths_topic}
        ages = found["imgflow_consumer_oldest_unprocessed_seconds"]
        aged = [k for k, v in lags.items() if v > 0 and ages.get(k, 0) > 0]
        return found if aged else None

    found = wait_until(backlog, 30, "a lag on the paths topic, with its oldest message's age")
    lagging = {k for k, v in found["imgflow_consumer_lag"].items() if k[0] == paths_topic and v > 0}
    ages = found["imgflow_consumer_oldest_unprocessed_seconds"]
    assert all(ages[k] >= 0 for k in lagging if k in ages) and any(ages.get(k, 0) > 0 for k in lagging)
    assert found["imgflow_consumer_lag_total"][("", "")] >= sum(
        found["imgflow_consumer_lag"][k] for k in lagging
    )
    _status, health = worker.health()
    assert health["version"] == imgflow.__version__  # which release answers, for probes and people
    assert health["lag"] >= 0 and set(health["lag_by_partition"]) >= {f"{paths_topic}[{p}]" for p in owned}
    assert health["oldest_unprocessed_s"] is not None

    db = pipeline.mongo()
    wait_until(lambda: db.images.count_documents({}) >= IMAGES, 180, "every image stored")
    assert db.failures.count_documents({}) == 0
    drained = wait_until(
        lambda: (s := scrape(worker.url))["imgflow_consumer_lag_total"][("", "")] == 0 and s,
        60,
        "the lag back to zero once committed",
    )
    assert all(v == 0 for v in drained["imgflow_consumer_oldest_unprocessed_seconds"].values())


class SlowProbeConsumer:
    """A probe consumer whose fetch takes until the test lets it finish."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.fetches = 0

    def assign(self, partitions: list) -> None:
        self.assigned = partitions

    def seek(self, tp, offset: int) -> None:
        self.offset = offset

    async def getmany(self, tp, timeout_ms: int, max_records: int) -> dict:
        from types import SimpleNamespace

        self.fetches += 1
        await self.release.wait()
        return {tp: [SimpleNamespace(timestamp=1_000_000)]}  # 1,000 s after the epoch


@pytest.mark.asyncio
async def test_the_age_probe_never_holds_up_a_scrape():
    """/health/ and /metrics answer from the last probe: with a backlog and a broker slow to
    answer, a scrape returns at once and starts one probe round, not one per scrape."""
    from imgflow.lag import AgeProbe, PartitionLag

    probe = AgeProbe("unused:9092")
    fake = SlowProbeConsumer()

    async def started():
        return fake

    probe._started = started  # type: ignore[method-assign]
    lags = [PartitionLag("t", 0, lag=5, committed=10), PartitionLag("t", 1, lag=0, committed=3)]
    first = await probe.ages(lags, now=1_060.0)
    assert [i.oldest_age_s for i in first] == [None, 0.0]  # not probed yet; no lag: zero
    second = await probe.ages(lags, now=1_060.0)  # the round is still waiting on the broker
    assert [i.oldest_age_s for i in second] == [None, 0.0]
    await asyncio.sleep(0)
    assert fake.fetches == 1 and not fake.release.is_set()
    fake.release.set()
    await probe._round
    third = await probe.ages(lags, now=1_060.0)
    assert [i.oldest_age_s for i in third] == [60.0, 0.0] and fake.fetches == 1
    assert fake.offset == 10  # read at the committed offset
