"""A command whose service is unreachable says so in one line and exits non-zero (cli/command.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from pymongo.errors import ServerSelectionTimeoutError

from cli.command import EXIT_UNREACHABLE, unreachable, without_secret
from imgflow.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def faust(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    port = closed_port()
    environ = {
        **os.environ,
        "IMGFLOW_HOME": str(tmp_path),
        "BROKER_URL": f"kafka://127.0.0.1:{port}",
        "MONGO_URL": f"mongodb://127.0.0.1:{port}",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "faust", "-A", "imgflow", *args],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_command_without_mongodb_names_it_its_address_and_setting_in_one_line(tmp_path: Path) -> None:
    done = faust(["latest"], tmp_path, MONGO_URL=f"mongodb://reader:hunter2@127.0.0.1:{closed_port()}")
    assert done.returncode == EXIT_UNREACHABLE, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    [line] = [text for text in done.stderr.splitlines() if text.startswith("latest:")]
    assert "MongoDB at mongodb://reader:***@127.0.0.1:" in line and "(MONGO_URL)" in line
    assert "hunter2" not in done.stderr


def test_a_command_without_the_broker_names_it_in_one_line(tmp_path: Path) -> None:
    done = faust(["promote", "--show"], tmp_path)
    assert done.returncode == EXIT_UNREACHABLE, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert any(
        text.startswith("promote: the Kafka broker at 127.0.0.1:") and "(BROKER_URL)" in text
        for text in done.stderr.splitlines()
    )


@pytest.mark.parametrize(
    ("error", "service", "setting"),
    [
        (ServerSelectionTimeoutError("127.0.0.1:1: refused"), "MongoDB", "MONGO_URL"),
        (KafkaConnectionError("Unable to bootstrap"), "Kafka", "BROKER_URL"),
        (urllib.error.URLError("refused"), "workers", "IMGFLOW_WORKER_URLS"),
    ],
)
def test_each_unreachable_service_is_named_with_its_setting(
    error: Exception, service: str, setting: str
) -> None:
    found = unreachable(error, Settings())
    assert found is not None and found[0] == service and f"({setting})" in found[1]


def test_any_other_error_is_not_taken_for_an_unreachable_service() -> None:
    assert unreachable(ValueError("model must be given as NAME:VERSION"), Settings()) is None


def test_a_password_in_a_url_is_never_printed() -> None:
    assert without_secret("mongodb://app:s3cret@db:27017/x") == "mongodb://app:***@db:27017/x"
    assert without_secret("mongodb://db:27017") == "mongodb://db:27017"
