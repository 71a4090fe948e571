"""``replay`` and ``compare``: reprocess what already flowed through, and compare model versions."""

from __future__ import annotations

import json

from faust.cli import option

from cli.command import command
from imgflow.app import settings


@command(
    option("--topic", type=str, default="paths", help="paths (default), frames, or failed (dead letters)."),
    option("--since", default=None, help="ISO time or duration ago (e.g. 2h) on record timestamps."),
    option("--until", default=None, help="ISO time or duration ago; records before it."),
    option("--offsets", multiple=True, help="PARTITION:FIRST-LAST (inclusive) or PARTITION:FIRST-."),
    option("--source", multiple=True, help="Only images from this source (repeatable)."),
    option("--label", multiple=True, help="Only images whose current label is this (repeatable)."),
    option("--failed-only", is_flag=True, default=False, help="Re-send the images in the failures list."),
    option("--model", default=None, help="Pin the replayed images to this model spec file."),
    option("--dry-run", is_flag=True, default=False, help="Only count what would be replayed."),
    option("--replay-id", default=None, help="Tag for the replayed messages (default: generated)."),
    option("--include-replays", is_flag=True, default=False, help="Also re-send earlier replays' messages."),
)
async def replay(
    self,
    topic: str,
    since: str | None,
    until: str | None,
    offsets: tuple[str, ...],
    source: tuple[str, ...],
    label: tuple[str, ...],
    failed_only: bool,
    model: str | None,
    dry_run: bool,
    replay_id: str | None,
    include_replays: bool,
) -> None:
    """Re-publish a range of a topic into the chain (workers keep running)."""
    from tqdm import tqdm

    from lifecycle import failed
    from lifecycle import replay as rp

    if failed_only:
        if dry_run:
            client, db = failed.mongo_db(settings)
            try:
                n = sum(len(chunk) for chunk in failed.failure_chunks(db))
            finally:
                client.close()
            self.say(f"would retry {n} failed images")
            return
        with tqdm(unit="img", desc="retry") as bar:
            sent = await failed.retry_failed(settings=settings, progress=lambda n: bar.update(n - bar.n))
        self.say(f"retried {sent} failed images")
        return
    start, end = rp.since_until(since, until)
    selection = rp.Selection(
        since=start,
        until=end,
        offsets=rp.parse_offsets(offsets),
        sources=frozenset(source),
        image_ids=rp.image_ids_with_label(settings, label) if label else None,
        include_replays=include_replays,
    )
    from models.spec import ModelError

    try:
        with tqdm(unit="img", desc="replay", disable=dry_run) as bar:
            report = await rp.replay(
                topic_kind=topic,
                selection=selection,
                model=model,
                dry_run=dry_run,
                replay_id=replay_id,
                settings=settings,
                progress=bar.update,
            )
    except ModelError as exc:  # --model names no registered model: say so, no traceback
        self.say(f"replay: {exc}", file=self.stderr)
        raise SystemExit(1) from None
    self.say(report.in_words(dry_run))


@command(
    option("--model-a", required=True, help="NAME:VERSION, e.g. efficientnet-lite0:1.0.0"),
    option("--model-b", required=True, help="NAME:VERSION"),
    option("--limit", type=int, default=20, help="How many changed images to list."),
    option("--json", "as_json", is_flag=True, default=False, help="Print the report as JSON."),
)
async def compare(self, model_a: str, model_b: str, limit: int, as_json: bool) -> None:
    """Agreement, confusion of top-1 labels and most-changed images between two model versions."""
    from pymongo import MongoClient
    from tqdm import tqdm

    from imgflow.mongo import connect
    from imgflow.queries import compare_models

    client: MongoClient = connect(settings.mongo_url)
    try:
        # Range by range over the image ids (bounded memory); the bar counts ranges.
        with tqdm(unit="range", desc="compare", disable=as_json) as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            report = compare_models(client[settings.mongo_db], model_a, model_b, limit, progress=advance)
    finally:
        client.close()
    if as_json:
        self.say(json.dumps(report, indent=2))
        return
    if not report["images"]:
        self.say(f"no image has predictions from both {model_a} and {model_b}")
        return
    self.say(
        f"{report['images']} images predicted by both; {report['agree']} agree "
        f"({report['agreement']:.1%})\n\nconfusion (rows {model_a}, columns {model_b}):"
    )
    for label_a, row in report["confusion"].items():
        cells = ", ".join(f"{label_b}: {n}" for label_b, n in sorted(row.items(), key=lambda kv: -kv[1]))
        self.say(f"  {label_a:<30} -> {cells}")
    if report["changed"]:
        self.say("\nimages whose label changed most:")
        for c in report["changed"]:
            self.say(
                f"  {c['image_id'][:16]}  {c['label_a']} ({c['score_a']:.2f}) -> "
                f"{c['label_b']} ({c['score_b']:.2f})  delta {c['delta']:.2f}"
            )
