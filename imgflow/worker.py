"""The Faust worker class ``faust -A imgflow worker`` runs (``App(Worker=...)``).

Faust's worker draws a terminal spinner; to make it spin on every log message
it sets the root logger to DEBUG whenever the chosen level is WARN or above
(the default). Every library then builds a log record for every debug call
(aiokafka's fetcher alone makes several per fetch) only for it to be dropped:
a few percent of a busy worker's CPU. imgflow's worker has no spinner, so the
root logger keeps the level asked for.
"""

from __future__ import annotations

import logging

import faust


class Worker(faust.Worker):
    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
