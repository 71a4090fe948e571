"""Image roots: a path is read only if its real location is inside a configured folder.

The pure check (imgflow/roots.py) against real files, links and folders, and the
decode stage's use of it: a refused file is never opened, seen by Python's audit
hooks (every ``open`` of a file, by ``open``, ``io.open``, ``os.open`` or pathlib, is an
audit event), so a decode that opened it first would fail here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from imgflow.imaging import ImageRejected, Limits
from imgflow.records import ImagePath
from imgflow.roots import OUTSIDE_ROOTS, inside_roots, require_inside_roots

_opened: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside opened_files()


@contextmanager
def opened_files() -> Iterator[list[str]]:
    """Every file name opened by this process meanwhile."""
    names: list[str] = []
    _opened.append(names)
    try:
        yield names
    finally:
        _opened.remove(names)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """data/ (the root) with a photo and links, data2/ and secret/ beside it."""
    data, data2, secret = tmp_path / "data", tmp_path / "data2", tmp_path / "secret"
    for folder in (data / "sub", data2, secret):
        folder.mkdir(parents=True)
    Image.new("RGB", (32, 24), (200, 40, 40)).save(data / "sub" / "cat.png")
    Image.new("RGB", (32, 24), (40, 40, 200)).save(secret / "key.png")
    (data2 / "x.png").write_bytes((data / "sub" / "cat.png").read_bytes())
    (data / "escape.png").symlink_to(secret / "key.png")
    (data / "escape-dir").symlink_to(secret, target_is_directory=True)
    (data / "inner.png").symlink_to(data / "sub" / "cat.png")
    return {"root": data, "data2": data2, "secret": secret, "tmp": tmp_path}


def test_a_file_inside_a_root_is_allowed_as_its_real_path(tree: dict[str, Path]):
    root = tree["root"]
    assert inside_roots(root / "sub" / "cat.png", [root]) == (root / "sub" / "cat.png").resolve()
    assert inside_roots(str(root / "sub" / ".." / "sub" / "cat.png"), [root]) == root / "sub" / "cat.png"
    # A link that stays inside the root is fine; what is read is its target.
    assert inside_roots(root / "inner.png", [root]) == root / "sub" / "cat.png"


def test_dot_dot_that_climbs_out_is_refused(tree: dict[str, Path]):
    root = tree["root"]
    assert inside_roots(root / ".." / "secret" / "key.png", [root]) is None
    assert inside_roots(f"{root}/sub/../../secret/key.png", [root]) is None
    assert inside_roots("/etc/passwd", [root]) is None
    assert inside_roots(f"{root}/../../../../../../etc/passwd", [root]) is None


def test_a_sibling_folder_sharing_the_prefix_is_not_inside(tree: dict[str, Path]):
    # /tmp/.../data2 starts with the characters of /tmp/.../data but is another folder.
    assert str(tree["data2"]).startswith(str(tree["root"]))
    assert inside_roots(tree["data2"] / "x.png", [tree["root"]]) is None
    assert inside_roots(tree["data2"] / "x.png", [tree["root"], tree["data2"]]) == tree["data2"] / "x.png"


def test_a_symlink_inside_a_root_pointing_outside_is_refused(tree: dict[str, Path]):
    root = tree["root"]
    assert inside_roots(root / "escape.png", [root]) is None
    assert inside_roots(root / "escape-dir" / "key.png", [root]) is None


def test_a_root_reached_through_a_link_still_contains_its_files(tree: dict[str, Path]):
    alias = tree["tmp"] / "alias"
    alias.symlink_to(tree["root"], target_is_directory=True)
    real = tree["root"] / "sub" / "cat.png"
    assert inside_roots(real, [alias]) == real
    assert inside_roots(alias / "sub" / "cat.png", [tree["root"]]) == real


def test_nothing_is_allowed_without_roots_or_without_a_path(tree: dict[str, Path]):
    assert inside_roots(tree["root"] / "sub" / "cat.png", []) is None
    assert inside_roots(tree["root"] / "sub" / "cat.png", [""]) is None
    assert inside_roots("", [tree["root"]]) is None
    assert inside_roots(None, [tree["root"]]) is None
    assert inside_roots(f"{tree['root']}/sub/cat\x00.png", [tree["root"]]) is None


def test_a_missing_file_inside_a_root_passes_so_it_fails_as_missing_later(tree: dict[str, Path]):
    root = tree["root"]
    assert inside_roots(root / "sub" / "gone.jpg", [root]) == root / "sub" / "gone.jpg"


def test_a_symlink_loop_is_refused(tree: dict[str, Path]):
    root = tree["root"]
    (root / "loop-a").symlink_to(root / "loop-b")
    (root / "loop-b").symlink_to(root / "loop-a")
    assert inside_roots(root / "loop-a", [root]) is None


def test_refusal_has_a_stable_kind_and_a_readable_message(tree: dict[str, Path]):
    with pytest.raises(ImageRejected) as info:
        require_inside_roots("/etc/passwd", [tree["root"]])
    assert info.value.kind == OUTSIDE_ROOTS == "outside_roots"
    assert "/etc/passwd" in info.value.message and "IMGFLOW_IMAGE_ROOTS" in info.value.message


# The decode stage -------------------------------------------------------------------------


def item(path: Path | str, spec: Path) -> ImagePath:
    return ImagePath(image_id="i1", path=str(path), source="test", model=str(spec))


@pytest.mark.slow  # default_model_spec builds the default model when missing
def test_decode_refuses_outside_paths_without_opening_them(tree: dict[str, Path], default_model_spec: Path):
    from agents.decode import decode_one

    roots = [tree["root"]]
    fifo = tree["secret"] / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would block this test forever
    outside = [tree["secret"] / "key.png", tree["root"] / "escape.png", fifo, Path("/etc/passwd")]
    for path in outside:
        with opened_files() as opened, pytest.raises(ImageRejected) as info:
            decode_one(item(path, default_model_spec), Limits(), roots, default_model_spec)
        assert info.value.kind == "outside_roots", path
        targets = {str(path), str(Path(path).resolve())}
        assert not targets & set(opened), f"{path} was opened: {opened}"


@pytest.mark.slow  # default_model_spec builds the default model when missing
def test_decode_reads_an_allowed_file_through_its_checked_real_path(
    tree: dict[str, Path], default_model_spec: Path
):
    from agents.decode import decode_one

    link = tree["root"] / "inner.png"
    with opened_files() as opened:
        decoded = decode_one(item(link, default_model_spec), Limits(), [tree["root"]], default_model_spec)
    assert decoded.record.shape == [224, 224, 3] and len(decoded.pixels) == 224 * 224 * 3
    assert decoded.record.meta.file_name == "inner.png"  # the name it was sent as
    # The audit hook does see opens: the checked real path, never the link.
    assert str(tree["root"] / "sub" / "cat.png") in opened and str(link) not in opened
