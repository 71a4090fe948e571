"""The worker keeps the log level it was started with (no DEBUG root logger for a spinner)."""

from __future__ import annotations

import logging

from imgflow.app import app
from imgflow.faust_fixes.worker import Worker


def test_the_app_runs_imgflows_worker():
    assert app.conf.Worker is Worker


def test_a_warn_level_worker_leaves_the_root_logger_at_warn():
    worker = Worker(app, loglevel="warn")
    logger = logging.Logger("root-under-test", level=logging.WARN)
    logger.addHandler(logging.NullHandler())
    worker.on_setup_root_logger(logger, logging.WARN)
    assert logger.level == logging.WARN
    assert not logger.isEnabledFor(logging.DEBUG)
