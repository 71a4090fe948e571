"""Session fixtures: a real Kafka-protocol broker, a MongoDB-protocol server, the default model.

Each is its own fixture, so a test starts only what it uses: a dashboard test
that needs MongoDB asks for ``mongo_url`` and neither starts the broker nor
builds the TensorFlow model. ``services`` composes all three for the workers.

When ``BROKER_URL`` / ``MONGO_URL`` are set, the tests use those services;
otherwise they start the embedded ones (Tansu, SecantusDB) on free loopback
ports and stop them by PID at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Pipeline, Services

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_model_spec() -> Path:
    """The default EfficientNet-Lite0 model, built once (and reused across runs)."""
    from models.efficientnet_lite import build_default_model

    return build_default_model(ROOT / "var" / "models" / "efficientnet-lite0")


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the embedded services keep their data and logs for this session."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def broker_url(services_dir: Path) -> Iterator[str]:
    """``BROKER_URL``, or an embedded Tansu broker started for the session."""
    url = os.environ.get("BROKER_URL")
    if url:
        yield url
        return
    from devstack.embedded import start_broker

    broker = start_broker(services_dir / "logs")
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mongo_url(services_dir: Path) -> Iterator[str]:
    """``MONGO_URL``, or an embedded SecantusDB started for the session."""
    url = os.environ.get("MONGO_URL")
    if url:
        yield url
        return
    from devstack.embedded import start_mongo

    mongo = start_mongo(services_dir / "mongo", services_dir / "logs")
    try:
        yield mongo.url
    finally:
        mongo.stop()


@pytest.fixture(scope="session")
def s3_env(services_dir: Path) -> Iterator[dict[str, str]]:
    """A real S3-protocol server (moto's, from PyPI) on a free loopback port, for the session:
    the environment a worker or a client needs to use it (endpoint and test credentials)."""
    import sys

    from devstack.embedded import Service, free_port, wait_for_port

    port = free_port()
    server = Service("moto-s3", port, services_dir / "logs" / "moto.log")
    moto = Path(sys.executable).parent / "moto_server"
    server.start([str(moto), "-H", "127.0.0.1", "-p", str(port)])
    try:
        assert server.proc is not None
        wait_for_port(port, server.proc, 30, "the S3-protocol server (moto)")
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "imgflow-test",
            "AWS_SECRET_ACCESS_KEY": "imgflow-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        server.stop()


@pytest.fixture
def scratch_db(mongo_url: str) -> Iterator:
    """A database of its own on the session's MongoDB-protocol server, dropped after the test."""
    import uuid

    from pymongo import MongoClient

    client: MongoClient = MongoClient(mongo_url)
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture(scope="session")
def services(broker_url: str, mongo_url: str, default_model_spec: Path) -> Services:
    """Everything a worker process needs: the broker, MongoDB and the default model."""
    return Services(broker_url=broker_url, mongo_url=mongo_url, model_spec=default_model_spec)


@pytest.fixture
def pipeline(
    services: Services, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """An isolated deployment (own group, topics, database); its workers stop after the test.

    Its workers may read images anywhere under the session's temporary folder
    (IMGFLOW_IMAGE_ROOTS), where tests write them; nowhere else.
    """
    p = Pipeline(services=services, home=tmp_path / "home", image_roots=tmp_path_factory.getbasetemp())
    p.home.mkdir(parents=True)
    try:
        yield p
    finally:
        p.stop()
