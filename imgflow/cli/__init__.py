"""App commands: ``faust -A imgflow <command>`` (see ``faust -A imgflow --help``).

One module per command group; Faust finds them by autodiscovery.
"""

from __future__ import annotations

from pathlib import Path


def expand(paths: tuple[str, ...], recursive: bool = True) -> list[Path]:
    """Files, folders (recursively) and globs to a sorted list of image files."""
    from glob import glob

    from simulator.dataset import list_images

    found: list[Path] = []
    for raw in paths:
        matches = [Path(m) for m in glob(raw, recursive=True)] or [Path(raw)]
        for path in matches:
            if path.is_dir():
                found += list_images(path, recursive=recursive)
            else:
                found.append(path)  # a missing file still goes on: it fails visibly
    return found
