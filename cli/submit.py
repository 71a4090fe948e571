"""``submit``: put image files into the chain (the source itself: ``sources/submit.py``).

``submit PATH...`` takes files, folders (recursive unless ``--no-recursive``)
and globs, publishes one ``imgflow-paths`` message per image with a progress
bar, and prints ``image_id<TAB>path`` lines (or writes the ids to
``--ids-out``). With ``--wait`` it then blocks until every image is stored or
failed and prints a summary; with Faust's global ``--json``
(``faust --json -A imgflow submit --wait ...``) the summary is one JSON object.
Exit codes: 0 when every image has a result (failed images are results, listed
in the summary), 1 when nothing was found, 2 when ``--timeout`` passed first.
"""

from __future__ import annotations

import json
from pathlib import Path

from faust.cli import argument, option

from cli.command import command
from imgflow.app import settings
from imgflow.objects import inside_object_roots, is_uri
from imgflow.roots import inside_roots

EXIT_NOTHING_FOUND = 1
EXIT_TIMEOUT = 2


@command(
    argument("paths", nargs=-1, required=True),
    option("--source", default="submit", help="Source tag stored with each image."),
    option("--model", default=None, help="Pin these images to another model spec file."),
    option("--ids-out", default=None, help="Write the image ids (one per line) to this file."),
    option("--no-recursive", is_flag=True, default=False, help="Do not descend into folders."),
    option("--wait", is_flag=True, default=False, help="Block until every image is stored or failed."),
    option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds."),
    option("--no-progress", is_flag=True, default=False, help="No progress bars."),
)
async def submit(
    self,
    paths: tuple[str, ...],
    source: str,
    model: str | None,
    ids_out: str | None,
    no_recursive: bool,
    wait: bool,
    timeout: float | None,
    no_progress: bool,
) -> None:
    """Submit image files, folders or globs to the chain (--wait: until stored)."""
    from tqdm import tqdm

    from sources.results import ResultWatch, wait_for_results
    from sources.submit import expand, submit_files

    files = list(dict.fromkeys(expand(paths, recursive=not no_recursive)))  # each file once
    if not files:
        self.say("no images found", file=self.stderr)
        raise SystemExit(EXIT_NOTHING_FOUND)
    model_path = str(Path(model).resolve()) if model else None
    quiet = no_progress or self.json
    outside = [
        p
        for p in files
        if (
            inside_object_roots(str(p), settings.object_roots)
            if is_uri(str(p))
            else inside_roots(p, settings.image_root_paths)
        )
        is None
    ]
    if outside:
        # Workers refuse them (failure kind outside_roots); say so before they are sent.
        self.say(
            f"warning: {len(outside)} of {len(files)} files are outside the image roots "
            f"(e.g. {outside[0]}); the workers will refuse them. Add their folder to IMGFLOW_IMAGE_ROOTS.",
            file=self.stderr,
        )

    watch = ResultWatch(settings) if wait else None
    if watch is not None:
        await watch.start()  # the position to read results from is taken before publishing
    try:
        with tqdm(total=len(files), unit="img", desc="submit", disable=quiet) as bar:
            ids = await submit_files(files, source, model=model_path, watch=watch, progress=bar.update)
        if ids_out:
            Path(ids_out).write_text("\n".join(ids) + "\n")
        elif not self.json:
            for path, image_id in zip(files, ids, strict=True):
                self.say(f"{image_id}\t{path}")
        if watch is None:
            if self.json:
                self.say(json.dumps({"submitted": len(ids), "image_ids": ids}))
            return
        with tqdm(total=len(ids), unit="img", desc="results", disable=quiet) as bar:
            summary = await wait_for_results(watch, ids, timeout, on_outcome=lambda _: bar.update(1))
    finally:
        if watch is not None:
            await watch.stop()

    if self.json:
        by_id = dict(zip(ids, files, strict=True))
        body = summary.as_json()
        body["images"] = [
            {"image_id": i, "path": str(by_id[i]), "status": "pending"}
            | (summary.outcomes[i].as_json() if i in summary.outcomes else {})
            for i in ids
        ]
        self.say(json.dumps(body))
    else:
        for line in summary.lines():
            self.say(line)
        paths_by_id = dict(zip(ids, files, strict=True))
        for outcome in summary.outcomes.values():
            if outcome.status == "failed":
                self.say(f"FAILED {paths_by_id[outcome.image_id]}: {outcome.kind}: {outcome.message}")
    if summary.timed_out:
        self.say(f"timed out after {timeout:g}s with {summary.pending} images pending", file=self.stderr)
        raise SystemExit(EXIT_TIMEOUT)
