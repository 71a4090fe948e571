"""What imgflow changes in or around Faust 0.15.3, in one place, to delete when upstream is fixed.

- ``consumer``: the consumer's commit point, recovery and fetch defects, replaced by small
  tested functions that :func:`~imgflow.faust_fixes.consumer.install` puts in place (each
  patch is pinned by the source hash of the function it replaces).
- ``liveness``: the second line of defence, a stalled-partition detector.
- ``worker``: the worker class without the terminal spinner's DEBUG root logger.

Nothing outside this package patches Faust.
"""
