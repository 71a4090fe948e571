"""Sources: where images enter the chain, and how their senders hear back.

Every source ends in the same two calls of :mod:`imgflow.sources.publish`:
:func:`~imgflow.sources.publish.path_message` (the one place an ``image_id`` is
assigned and a path message is filled in) and
:func:`~imgflow.sources.publish.publish_paths` (the one way onto
``imgflow-paths``, returning only after the broker acknowledged). What became
of the images is read from ``imgflow-stored`` / ``imgflow-failed`` by
:mod:`imgflow.sources.results`, the one reader of those topics.

- :mod:`~imgflow.sources.files`: what counts as an image file (every source that finds files)
- :mod:`~imgflow.sources.submit`: ``faust -A imgflow submit`` (files, folders, globs)
- :mod:`~imgflow.sources.watcher`: ``faust -A imgflow watch`` (watched folders)
- :mod:`~imgflow.sources.upload`: ``POST /images/`` (the files of an HTTP upload)
- ``simulator/`` (top level, the demo's stream) and :mod:`imgflow.replay` publish through
  :mod:`~imgflow.sources.publish` too.

The command line lives in :mod:`imgflow.cli`, the view in :mod:`imgflow.web.upload`:
importing a source starts nothing and needs no Faust app.
"""
