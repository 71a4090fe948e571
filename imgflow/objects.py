"""Images in object stores: a path may be a URI (``s3://bucket/key``), read through fsspec.

So that every node can read an image without a shared volume. Credentials and the endpoint
come from the environment as the store's own client reads them (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for a non-AWS server, ``AWS_DEFAULT_REGION``).

The same rules as for files: a URI is read only under an object root (``IMGFLOW_IMAGE_ROOTS``
entries that are URIs, ``IMGFLOW_UPLOAD_URI``), compared by whole key segments after refusing
``.``/``..`` segments (an object store does not collapse them, a person reading the URI
would); the same limits (size before reading); the same failure kinds: a missing object is
``missing_file``, access denied is ``unreadable_file``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from imgflow.imaging import ImageRejected, Limits

log = logging.getLogger(__name__)

#: Schemes imgflow reads (fsspec knows more; these are the tested ones).
SCHEMES = ("s3://",)


def is_uri(path: str | None) -> bool:
    return bool(path) and str(path).startswith(SCHEMES)


#: Characters fsspec reads as more than a key: ``::`` chains file systems (each new chain a
#: new cached file system, ``::memory:`` one of them), ``?`` and ``#`` options and fragments.
REFUSED = ("::", "?", "#")


def normalized(uri: str) -> str | None:
    """``scheme://bucket/key`` with no empty, ``.`` or ``..`` segment and none of
    :data:`REFUSED`, or None."""
    scheme, sep, rest = uri.partition("://")
    if not sep or not rest or any(mark in uri for mark in REFUSED):
        return None
    parts = rest.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\x00" in rest:
        return None
    return f"{scheme}://{rest}"


def inside_object_roots(uri: str | None, roots: Iterable[str]) -> str | None:
    """``uri`` normalised if it lies under one of ``roots`` (whole segments), else None."""
    if not is_uri(uri):
        return None
    assert uri is not None
    clean = normalized(uri)
    if clean is None:
        return None
    for root in roots:
        base = root.rstrip("/")
        if base and normalized(base) is not None and clean.startswith(base + "/"):
            return clean
    return None


def require_object_root(uri: str, roots: Iterable[str]) -> str:
    clean = inside_object_roots(uri, roots)
    if clean is None:
        raise ImageRejected(
            "outside_roots",
            f"refused to read {uri}: it is not under an object root this worker may read "
            "(IMGFLOW_IMAGE_ROOTS entries that are URIs, IMGFLOW_UPLOAD_URI)",
        )
    return clean


def filesystem(uri: str) -> tuple[Any, str]:
    """fsspec's file system for ``uri`` (cached by fsspec per configuration) and the path in it."""
    from fsspec.core import url_to_fs

    return url_to_fs(uri)


def read_object(uri: str, limits: Limits) -> bytes:
    """The whole object, refusing what is missing, unreadable, empty or too large (as files are)."""
    with _object_errors(uri):
        fs, path = filesystem(uri)
        size = fs.info(path).get("size")
    if size == 0:
        raise ImageRejected("empty_file", f"object is empty (0 bytes): {uri}")
    if size is not None and size > limits.max_file_bytes:
        raise ImageRejected(
            "file_too_large", f"object is {size:,} bytes, over the {limits.max_file_bytes:,}-byte limit"
        )
    with _object_errors(uri):
        data: bytes = fs.cat_file(path)
    return data


@contextmanager
def _object_errors(uri: str) -> Iterator[None]:
    """A store's errors as the kinds a file's would have."""
    try:
        yield
    except FileNotFoundError:
        raise ImageRejected("missing_file", f"no such object: {uri}") from None
    except PermissionError as exc:
        raise ImageRejected("unreadable_file", f"access denied to {uri}: {exc}") from None
    except OSError as exc:
        raise ImageRejected("unreadable_file", f"cannot read {uri}: {exc}") from None


def list_objects(prefix: str, recursive: bool = True) -> list[str]:
    """The image objects under ``prefix`` (by name suffix, as for folders), sorted."""
    from imgflow.files import IMAGE_SUFFIXES

    fs, path = filesystem(prefix)
    scheme = prefix.split("://", 1)[0]
    names = fs.find(path) if recursive else fs.ls(path, detail=False)
    return sorted(
        f"{scheme}://{name}"
        for name in names
        if "." in name and "." + name.rsplit(".", 1)[1].lower() in IMAGE_SUFFIXES
    )


def write_object(uri: str, data: bytes) -> None:
    """Put ``data`` at ``uri`` (an object store writes a whole object or nothing)."""
    fs, path = filesystem(uri)
    fs.pipe_file(path, data)


def remove_object(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
