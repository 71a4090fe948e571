"""``latest``: what MongoDB holds now."""

from __future__ import annotations

from faust.cli import option

from cli.command import command
from imgflow.app import settings


@command(
    option("--limit", type=int, default=10, help="How many of the newest images."),
)
async def latest(self, limit: int) -> None:
    """Print the newest stored predictions and failures from MongoDB."""
    from pymongo import MongoClient

    from imgflow.mongo import connect
    from imgflow.ranges import newest
    from imgflow.rates import History
    from imgflow.tally import FAILURES, IMAGES, totals

    client: MongoClient = connect(settings.mongo_url)
    try:
        db = client[settings.mongo_db]
        counts = totals(db)  # kept as results are stored: no count over the history
        self.say(f"{counts[IMAGES]} images stored, {counts[FAILURES]} failures in {settings.mongo_db}")
        floor = counts.get("first_at")
        images = newest(db.images, {}, limit, field="updated_at", floor=floor, guide=History(db).back)
        for doc in images:
            self.say(
                f"{doc['updated_at']:%H:%M:%S}  {doc['file_name']:<28} {doc['label']:<28} "
                f"{doc['score']:.2f}  {doc['model']} {doc['model_version']}"
            )
        failed = newest(
            db.failures, {"gone": {"$exists": False}}, limit, field="failed_at", floor=floor,
            guide=History(db, "failed").back,
        )  # fmt: skip
        for doc in failed:
            self.say(f"FAILED {doc.get('path') or doc['_id']}: {doc['kind']}: {doc['message']}")
    finally:
        client.close()


@command()
async def upgrade_store(self) -> None:
    """Bring a MongoDB stored by an older imgflow up to date: effective labels, filter choices,
    exact totals. Once, with workers and dashboards stopped; it reads the whole history."""
    from tqdm import tqdm

    from imgflow.mongo import connect
    from imgflow.upgrade import upgrade

    client = connect(settings.mongo_url)
    try:
        with tqdm(unit="range", desc="upgrade") as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            found = upgrade(client[settings.mongo_db], progress=advance)
    finally:
        client.close()
    self.say(", ".join(f"{k}: {v}" for k, v in found.items()))
