"""``GET /workers/``: every worker of the cluster, known to any of them from the group's assignment."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata
from faust.assignor.partition_assignor import PartitionAssignor

from imgflow import app
from web.views import members


def test_every_member_is_a_worker_of_the_cluster_even_one_without_partitions(monkeypatch: pytest.MonkeyPatch):
    """Faust's own assignor, as the group leader runs it: three members on two partitions."""
    assignor = PartitionAssignor(app, replicas=0)  # a fresh one: the app's keeps its state
    monkeypatch.setattr(app.router, "_assignor", assignor)
    topics = ["t-paths", "t-stored"]

    def other(url: str) -> ConsumerProtocolMemberMetadata:
        unassigned = ClientAssignment(actives={}, standbys={})
        metadata = ClientMetadata(assignment=unassigned, url=url, changelog_distribution={})
        return ConsumerProtocolMemberMetadata(assignor.version, topics, metadata.dumps())

    me = str(app.conf.canonical_url).rstrip("/")
    assert members() == [me]  # before any rebalance: itself only
    group = {
        "m1": assignor.metadata(set(topics)),
        "m2": other("http://10.0.0.2:6066"),
        "m3": other("http://10.0.0.3:6066"),
    }
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: {0, 1})
    assignments = assignor.assign(cluster, group)  # type: ignore[arg-type]  # only partitions_for_topic is read
    assert dict(assignments["m3"].assignment) == {"t-paths": [], "t-stored": []}  # no partition
    assignor.on_assignment(assignments["m1"])  # what this worker receives from the leader
    assert members() == sorted([me, "http://10.0.0.2:6066", "http://10.0.0.3:6066"])
