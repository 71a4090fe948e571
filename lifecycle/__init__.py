"""The model lifecycle: train, evaluate, compare, promote, replay.

Run by people through the CLI (``faust -A imgflow train|evaluate|compare|promote|replay``)
and by the dashboard's retry; workers never import it. The worker's side of a promotion
(following the control topic) is core: ``imgflow/control.py``.
"""
