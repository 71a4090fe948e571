"""Session fixtures: a real Kafka-protocol broker and MongoDB-protocol server.

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
def services(tmp_path_factory: pytest.TempPathFactory, default_model_spec: Path) -> Iterator[Services]:
    from imgflow.embedded import start_broker, start_mongo

    root = tmp_path_factory.mktemp("services")
    started = []
    broker_url = os.environ.get("BROKER_URL")
    mongo_url = os.environ.get("MONGO_URL")
    try:
        if not broker_url:
            broker = start_broker(root / "logs")
            started.append(broker)
            broker_url = broker.url
        if not mongo_url:
            mongo = start_mongo(root / "mongo", root / "logs")
            started.append(mongo)
            mongo_url = mongo.url
        yield Services(broker_url=broker_url, mongo_url=mongo_url, model_spec=default_model_spec)
    finally:
        for service in reversed(started):
            service.stop()


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
