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
