"""``submit --wait``'s bookkeeping: outcomes parsed from result topics, and the summary."""

from __future__ import annotations

import json
from pathlib import Path

from sources.publish import path_message
from sources.results import Outcome, Summary, outcome_of


def test_outcomes_are_read_from_stored_and_failed_records():
    stored = {
        "ref": {"image_id": "a", "path": "/data/a.jpg", "source": "test", "submitted_at": 1.0},
        "label": "tabby",
        "score": 0.8,
        "model": "m",
        "model_version": "1",
        "stored_at": 2.0,
    }
    assert outcome_of("stored", json.dumps(stored).encode()) == Outcome(
        "a", "stored", label="tabby", score=0.8
    )
    failed = {"image_id": "b", "stage": "decode", "kind": "empty_file", "message": "empty", "failed_at": 1.0}
    outcome = outcome_of("failed", json.dumps(failed).encode())
    assert (outcome.status, outcome.kind, outcome.stage) == ("failed", "empty_file", "decode")
    assert outcome_of("stored", b"not json") is None
    assert outcome_of("failed", b"{}") is None


def test_the_summary_counts_labels_and_failure_kinds():
    outcomes = {
        "a": Outcome("a", "stored", label="tabby"),
        "b": Outcome("b", "stored", label="tabby"),
        "c": Outcome("c", "stored", label="espresso"),
        "d": Outcome("d", "failed", kind="not_an_image"),
    }
    summary = Summary(submitted=5, outcomes=outcomes, seconds=2.5, timed_out=True)
    body = summary.as_json()
    assert (body["stored"], body["failed"], body["pending"]) == (3, 1, 1)
    assert body["labels"] == {"tabby": 2, "espresso": 1}
    assert body["failure_kinds"] == {"not_an_image": 1}
    lines = summary.lines()
    assert lines[0] == "stored 3, failed 1, pending 1 of 5 in 2.5s  (timed out)"
    assert lines[1] == "labels: tabby 2, espresso 1"
    assert lines[2] == "failures: not_an_image 1"


def test_path_messages_take_a_given_id_or_make_one(tmp_path: Path):
    given = path_message(tmp_path / "a.jpg", "watch", image_id="fixed")
    assert given.image_id == "fixed" and given.path == str((tmp_path / "a.jpg").resolve())
    made = path_message(Path("a.jpg"), "submit")
    assert len(made.image_id) == 32 and Path(made.path).is_absolute()
