"""Sources: where images enter the chain, and how their senders hear back.

Every source ends in the same two calls of :mod:`sources.publish`:
:func:`~sources.publish.path_message` (the one place an ``image_id`` is
assigned and a path message is filled in) and
:func:`~sources.publish.publish_paths` (the one way onto
``imgflow-paths``, returning only after the broker acknowledged). What became
of the images is read from ``imgflow-stored`` / ``imgflow-failed`` by
:mod:`sources.results`, the one reader of those topics.

- what counts as an image file is core (:mod:`imgflow.files`): the object store needs it too
- :mod:`~sources.submit`: ``faust -A imgflow submit`` (files, folders, globs)
- :mod:`~sources.watcher`: ``faust -A imgflow watch`` (watched folders)
- :mod:`~sources.upload`: ``POST /images/`` (the files of an HTTP upload)
- ``simulator/`` (top level, the demo's stream) and :mod:`lifecycle.replay` publish through
  :mod:`~sources.publish` too.

The command line lives in :mod:`cli`, the view in :mod:`web.upload`:
importing a source starts nothing and needs no Faust app.
"""
