"""Settings come from the documented environment names only."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgflow.settings import Settings


def test_defaults_work_on_one_machine(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", "/somewhere/else")  # a field named `home` must not read $HOME
    monkeypatch.setenv("PARTITIONS", "99")
    s = Settings()
    assert s.home == Path("var") and s.partitions == 4
    assert s.broker_url == "kafka://127.0.0.1:9092" and s.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.model_spec_path == Path("var/models/efficientnet-lite0/model.toml")
    assert s.topic("paths") == "imgflow-paths"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BROKER_URL", "k1:9092,k2:9092")
    monkeypatch.setenv("IMGFLOW_TOPIC_PREFIX", "cam")
    monkeypatch.setenv("IMGFLOW_BATCH_SIZE", "8")
    monkeypatch.setenv("IMGFLOW_WATCH_DIRS", "/a, /b")
    monkeypatch.setenv("IMGFLOW_MODEL", "/models/v2/model.toml")
    s = Settings()
    assert s.broker_url == "kafka://k1:9092,k2:9092"
    assert s.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert s.topic("failed") == "cam-failed" and s.batch_size == 8
    assert s.watch_paths == [Path("/a"), Path("/b")]
    assert s.model_spec_path == Path("/models/v2/model.toml")


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IMGFLOW_PARTITIONS", "0")
    with pytest.raises(ValueError, match="IMGFLOW_PARTITIONS"):
        Settings()


def test_the_demo_bounds_its_database_and_rolls_its_broker_by_default(monkeypatch: pytest.MonkeyPatch):
    s = Settings()
    assert s.mongo_cache_size == "128M" and s.broker_roll is True
    monkeypatch.setenv("IMGFLOW_MONGO_CACHE_SIZE", "lots")
    with pytest.raises(ValueError, match="IMGFLOW_MONGO_CACHE_SIZE"):
        Settings()
    monkeypatch.setenv("IMGFLOW_MONGO_CACHE_SIZE", "2G")
    monkeypatch.setenv("IMGFLOW_BROKER_ROLL", "false")
    s = Settings()
    assert s.mongo_cache_size == "2G" and s.broker_roll is False


def test_tables_are_durable_by_default_one_directory_per_worker(monkeypatch: pytest.MonkeyPatch):
    s = Settings()
    assert s.table_store == "rocksdb://"
    # Faust fills in the worker's web port: two workers on one machine never share RocksDB files.
    assert s.faust_datadir == str(Path("var/faust/worker-{conf.web_port}"))
    monkeypatch.setenv("IMGFLOW_TABLE_STORE", "memory")
    monkeypatch.setenv("IMGFLOW_DATA_DIR", "/state/worker1")
    s = Settings()
    assert s.table_store == "memory://" and s.faust_datadir == "/state/worker1"
    monkeypatch.setenv("IMGFLOW_TABLE_STORE", "redis://")
    with pytest.raises(ValueError, match="IMGFLOW_TABLE_STORE"):
        Settings()


def test_windows_are_whole_seconds_and_a_step_never_leaves_gaps(monkeypatch: pytest.MonkeyPatch):
    """Faust computes window ranges in whole seconds; refuse what it would count wrongly."""
    from faust.windows import HoppingWindow

    # Why: a fractional window starts on whole seconds and overlaps the next; a step longer
    # than the window puts some request times in no window at all.
    assert HoppingWindow(2.5, 2.5).ranges(101.3) == [(100.0, 102.4)]
    assert HoppingWindow(10, 30).ranges(100.3) == []

    monkeypatch.setenv("IMGFLOW_WINDOW_STEP", "20")
    s = Settings()
    assert (s.window_seconds, s.window_step) == (60.0, 20.0)
    monkeypatch.setenv("IMGFLOW_WINDOW_SECONDS", "8.0")  # whole, written as a float
    monkeypatch.setenv("IMGFLOW_WINDOW_STEP", "8")  # as long as the window: tumbling
    assert (Settings().window_seconds, Settings().window_step) == (8.0, 8.0)
    for seconds, step, wrong in [
        ("2.5", "", "IMGFLOW_WINDOW_SECONDS"),
        ("60", "2.5", "IMGFLOW_WINDOW_STEP"),
        ("60", "0.5", "IMGFLOW_WINDOW_STEP"),
        ("60", "0", "IMGFLOW_WINDOW_STEP"),
        ("60", "90", "IMGFLOW_WINDOW_STEP"),
    ]:
        monkeypatch.setenv("IMGFLOW_WINDOW_SECONDS", seconds)
        if step:
            monkeypatch.setenv("IMGFLOW_WINDOW_STEP", step)
        else:
            monkeypatch.delenv("IMGFLOW_WINDOW_STEP")
        with pytest.raises(ValueError, match=wrong):
            Settings()


def test_workers_sharing_a_machine_share_its_cores_for_the_model(monkeypatch):
    """make demo and the benchmark start N workers on one machine: each gets cores/N model threads."""
    import os

    from devstack.embedded import shared_cores

    monkeypatch.delenv("IMGFLOW_MODEL_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert shared_cores(1) == {"IMGFLOW_MODEL_THREADS": "4"}
    assert shared_cores(2) == {"IMGFLOW_MODEL_THREADS": "2"}
    assert shared_cores(8) == {"IMGFLOW_MODEL_THREADS": "1"}  # never 0 (which means all cores)
    monkeypatch.setenv("IMGFLOW_MODEL_THREADS", "3")
    assert shared_cores(2) == {}  # what the user set wins (the workers inherit it)
