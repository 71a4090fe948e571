"""The imgflow operations dashboard: ``panel serve dashboard/app.py``.

Configuration comes from the same environment variables as the workers
(MONGO_URL, MONGO_DB, IMGFLOW_WORKER_URLS, the image folders). One background
task per server process refreshes the live numbers for every open tab
(``dashboard.data_store.start_shared_refresh``); each session only follows it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import panel as pn

try:
    import dashboard  # noqa: F401 - installed with imgflow
except ImportError:  # served from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.data_store import DataStore, start_shared_refresh
from dashboard.views import Dashboard

pn.extension("tabulator", throttled=True, sizing_mode="stretch_width")

feed = start_shared_refresh()
board = Dashboard(store=DataStore(feed=feed), feed=feed)
board.connect(pn.state.curdoc)
board.template().servable(title="imgflow")
