"""Promotion records and rollbacks (imgflow/control.py), without a broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgflow.control import HISTORY, Promotion
from imgflow.settings import Settings
from lifecycle.promote import next_promotion, rollback_of
from tests.tiny_model import redblue_spec


def test_a_promotion_round_trips_through_its_message():
    p = Promotion("/m/a/model.toml", "a:1", 1700000000.5, "ana@host", ["", "/m/b/model.toml"])
    assert Promotion.decode(p.encode()) == p


def test_each_promotion_remembers_the_ones_before_it_up_to_a_limit():
    first = next_promotion(None, Path("/m/1/model.toml"), "m:1", "ana")
    assert first.history == []
    current = first
    for n in range(2, HISTORY + 5):
        current = next_promotion(current, Path(f"/m/{n}/model.toml"), f"m:{n}", "ana")
    assert len(current.history) == HISTORY
    assert current.history[-1] == f"/m/{HISTORY + 3}/model.toml"


def test_rollback_goes_back_one_step_then_to_the_configured_default(tmp_path: Path):
    default = redblue_spec(tmp_path / "default", name="default", version="1", labels=("a", "b"))
    other = redblue_spec(tmp_path / "other", name="other", version="2", labels=("a", "b"))
    newer = redblue_spec(tmp_path / "newer", name="newer", version="3", labels=("a", "b"))
    settings = Settings(IMGFLOW_MODEL=str(default), IMGFLOW_MODEL_DIRS=str(tmp_path))  # type: ignore[call-arg]

    two = next_promotion(next_promotion(None, other, "other:2", "ana"), newer, "newer:3", "ana")
    back = rollback_of(two, settings, "bo")
    assert (back.spec, back.model, back.history, back.by) == (str(other), "other:2", [], "bo")
    home = rollback_of(back, settings, "bo")
    assert (home.spec, home.model) == ("", "default:1")  # "": IMGFLOW_MODEL
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback_of(home, settings, "bo")
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback_of(None, settings, "bo")
