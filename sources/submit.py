"""``submit``: files, folders and globs named on the command line, published in chunks.

The command (:mod:`cli.submit`) owns options and output; this module
decides which files go and publishes them, so the same rules hold for any
caller that submits files.
"""

from __future__ import annotations

from collections.abc import Callable
from glob import glob
from pathlib import Path

from imgflow.files import list_images
from imgflow.objects import is_uri, list_objects
from sources.publish import path_message, publish_paths
from sources.results import ResultWatch

#: Messages per publish: one broker round trip per chunk, and the progress bar moves per chunk.
CHUNK = 100


def expand(paths: tuple[str, ...], recursive: bool = True) -> list[Path | str]:
    """Files, folders (recursively) and globs to a sorted list of image files; object-store
    URIs as they are, and a URI ending in ``/`` to the images under that prefix."""
    found: list[Path | str] = []
    for raw in paths:
        if is_uri(raw):
            found += list_objects(raw, recursive) if raw.endswith("/") else [raw]
            continue
        matches = [Path(m) for m in glob(raw, recursive=True)] or [Path(raw)]
        for path in matches:
            if path.is_dir():
                found += list_images(path, recursive=recursive)
            else:
                found.append(path)  # a missing file still goes on: it fails visibly
    return found


async def submit_files(
    files: list[Path | str],
    source: str,
    *,
    model: str | None = None,
    watch: ResultWatch | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[str]:
    """Publish one path message per file; returns the ids in the order of ``files``.

    With a ``watch`` (started before this call), each chunk's ids are expected
    before the chunk is published, so a fast result is never dropped as
    unknown.
    """
    ids: list[str] = []
    for start in range(0, len(files), CHUNK):
        messages = [path_message(p, source, model=model) for p in files[start : start + CHUNK]]
        if watch is not None:
            watch.expect(m.image_id for m in messages)
        ids += await publish_paths(messages)
        if progress is not None:
            progress(len(messages))
    return ids
