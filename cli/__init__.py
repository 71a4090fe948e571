"""App commands: ``faust -A imgflow <command>`` (see ``faust -A imgflow --help``).

One module per command group; Faust finds them by autodiscovery. Commands own
their options and output; what they do lives beside its peers (sources in
``sources/``, replay in ``lifecycle/replay.py``).
"""
