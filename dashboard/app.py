"""The imgflow operations dashboard: ``panel serve dashboard/app.py``.

Configuration comes from the same environment variables as the workers
(MONGO_URL, MONGO_DB, IMGFLOW_WORKER_URLS, the image folders). One background
task per server process refreshes the live numbers for every open tab
(``dashboard.feed.start_shared_refresh``); each session only follows it.
Start it with ``python -m dashboard.serve`` to get the login settings
(``IMGFLOW_DASHBOARD_AUTH_FILE``); every edit records the signed-in user.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import panel as pn

try:
    import dashboard  # noqa: F401 - installed with imgflow
except ImportError:  # served from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.board import Dashboard
from dashboard.data_store import DataStore
from dashboard.feed import start_shared_refresh

pn.extension("tabulator", throttled=True, sizing_mode="stretch_width")

feed = start_shared_refresh()
# pn.state.user: who signed in through Panel's basic auth (dashboard/serve.py), None when it is off.
user = pn.state.user
log = logging.getLogger("dashboard")
if log.level == logging.NOTSET:  # `panel serve` sets up Bokeh's loggers only; an audit line is INFO
    log.setLevel(logging.INFO)
log.info("dashboard session opened by %s", user or "anonymous (no login)")
board = Dashboard(store=DataStore(feed=feed, user=user), feed=feed)
board.connect(pn.state.curdoc)
board.template().servable(title="imgflow")
