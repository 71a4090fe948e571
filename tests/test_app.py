"""The app wires up: every stage, table, view and command is found, and importing is cheap."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ["imgflow", "agents", "tables", "models", "simulator"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package: str):
    """Autodiscovery only warns on a broken module; this fails instead."""
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        importlib.import_module(info.name)


def test_autodiscovery_finds_the_chain():
    from imgflow import app

    app.discover()
    agents = {name.rsplit(".", 1)[-1] for name in app.agents}
    assert {"decode", "classify", "store", "record_failures", "count_labels"} <= agents
    assert {"label_model_counts", "label_counted"} <= set(app.tables)
    assert "label_counts" not in app.tables  # derived from the per-version counts (one record less)
    routes = {view.view_path for view in app.web.views.values()}
    assert {"/health/", "/counts/", "/counts/local/", "/metrics", "/images/{image_id}"} <= routes


def test_importing_the_app_loads_no_tensorflow_and_opens_nothing():
    code = "import imgflow, sys; assert 'tensorflow' not in sys.modules, 'tensorflow imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
