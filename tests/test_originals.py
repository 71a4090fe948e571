"""One way to read an original (imgflow/originals.py): the decode stage, the annotate stage and
the dashboard's previews read files, objects and frames through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgflow.frames import frame_path
from imgflow.imaging import ImageRejected, Limits
from imgflow.originals import Origins, read_original, revision


def test_a_file_inside_the_roots_is_read_under_the_name_it_was_sent_as(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "cat.jpg").write_bytes(b"pixels")
    (root / "alias.jpg").symlink_to(root / "cat.jpg")
    assert read_original(str(root / "alias.jpg"), Origins([root]), Limits()) == (b"pixels", "alias.jpg")


@pytest.mark.parametrize(
    ("where", "kind"),
    [
        ("outside", "outside_roots"),
        ("s3://bucket/cat.jpg", "outside_roots"),  # no object root configured
        (frame_path("cam", "f1"), "frame_gone"),  # no frames kept here
    ],
)
def test_what_the_origins_do_not_allow_is_refused_with_its_kind(
    tmp_path: Path, where: str, kind: str
) -> None:
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    path = str(outside) if where == "outside" else where
    with pytest.raises(ImageRejected) as caught:
        read_original(path, Origins([tmp_path / "images"]), Limits())
    assert caught.value.kind == kind


def test_a_files_revision_changes_when_it_is_rewritten_and_frames_have_none(tmp_path: Path) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"one")
    first = revision(str(image))
    image.write_bytes(b"three")
    os.utime(image, ns=(0, 12345))
    assert first is not None and revision(str(image)) not in (None, first)
    assert revision(frame_path("cam", "f1")) is None
    assert revision("s3://bucket/cat.jpg") is None
