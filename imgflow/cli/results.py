"""``latest``: what MongoDB holds now."""

from __future__ import annotations

from faust.cli import option

from imgflow.app import app, settings


@app.command(
    option("--limit", type=int, default=10, help="How many of the newest images."),
)
async def latest(self, limit: int) -> None:
    """Print the newest stored predictions and failures from MongoDB."""
    from pymongo import DESCENDING, MongoClient

    from imgflow.mongo import connect

    client: MongoClient = connect(settings.mongo_url)
    try:
        db = client[settings.mongo_db]
        images = db.images.count_documents({})
        failures = db.failures.count_documents({})
        self.say(f"{images} images stored, {failures} failures in {settings.mongo_db}")
        for doc in db.images.find().sort("updated_at", DESCENDING).limit(limit):
            self.say(
                f"{doc['updated_at']:%H:%M:%S}  {doc['file_name']:<28} {doc['label']:<28} "
                f"{doc['score']:.2f}  {doc['model']} {doc['model_version']}"
            )
        for doc in db.failures.find().sort("failed_at", DESCENDING).limit(limit):
            self.say(f"FAILED {doc.get('path') or doc['_id']}: {doc['kind']}: {doc['message']}")
    finally:
        client.close()
