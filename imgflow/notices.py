"""Notices for the people watching: a problem coming, posted by one process, shown by the dashboard.

One small document per subject in MongoDB ``notices`` (posting the same subject again
replaces it; clearing removes it). The dashboard's shared refresh reads them all with
its other numbers. The launcher posts one when the embedded broker's memory nears its
limit (``devstack.launcher``), before anything fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

COLLECTION = "notices"


def post(db: Any, subject: str, message: str, level: str = "warning") -> None:
    db[COLLECTION].replace_one(
        {"_id": subject}, {"message": message, "level": level, "at": datetime.now(UTC)}, upsert=True
    )


def clear(db: Any, subject: str) -> None:
    db[COLLECTION].delete_one({"_id": subject})


def current(db: Any) -> list[dict[str, Any]]:
    """Every notice, oldest first (a handful at most: one per subject)."""
    return sorted(db[COLLECTION].find({}), key=lambda d: d.get("at") or datetime.min.replace(tzinfo=UTC))


def broker_memory(rss_mb: float, warn_mb: float) -> str | None:
    """What to tell people when the embedded broker holds ``rss_mb`` (None: nothing yet)."""
    if rss_mb < warn_mb:
        return None
    return (
        f"The embedded Kafka broker holds {rss_mb:,.0f} MB in memory (warning at {warn_mb:,.0f} MB): "
        "it keeps every record and applies no retention, so it grows until the machine runs out. "
        "For long runs use Apache Kafka (docker compose up; BROKER_URL), or restart the demo."
    )


def broker_records(held: int, limit: int) -> str:
    """What to tell people when one partition of the embedded broker holds ``held`` records."""
    return (
        f"The embedded Kafka broker holds {held:,} records in one partition (limit {limit:,}): it "
        "lists them all on every read of that partition, so each image costs it more the longer it runs. "
        "For long runs use Apache Kafka (docker compose up; BROKER_URL), or restart the demo."
    )


def broker_rolled(reached: str) -> str:
    """What to tell people after the launcher swapped a full embedded broker for a fresh one
    (``reached``: which limit, e.g. "1,500 MB (limit 1,000 MB)")."""
    at = datetime.now(UTC).strftime("%H:%M UTC")
    return (
        f"The embedded Kafka broker reached {reached} and was rolled over to a fresh one at {at}, "
        "after every submitted image was stored: results are in MongoDB, the live window counts "
        "were carried over. For long runs use Apache Kafka (docker compose up; BROKER_URL)."
    )
