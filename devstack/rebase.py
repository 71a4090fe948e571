"""The live counts' state on a fresh broker (the launcher's roll-over, ``devstack/launcher.py``).

The count tables are idempotent by the position (offset + 1) in ``imgflow-stored`` of the
event that wrote them (``tables/label_counts.py``). A fresh broker numbers offsets from 0
again, so the values carried over keep their counts and drop their positions: a count takes
the next event whatever its position (last position 0), and an image already counted stays
counted (-1, a position no event has). Pure, and free of the Faust app: the launcher uses it.
"""

from __future__ import annotations

import json

#: What a value of each table's changelog becomes on a fresh broker, by topic suffix.
COUNTS = "-label_model_counts-changelog"
COUNTED = "-label_counted-changelog"


def rebase(topic: str, value: bytes) -> bytes | None:
    """A changelog value carried over to a fresh broker (other tables' values unchanged)."""
    if topic.endswith(COUNTS):
        count = json.loads(value)
        count = count[0] if isinstance(count, list) else count  # [count, position]; a bare int
        return json.dumps([int(count or 0), 0]).encode()
    if topic.endswith(COUNTED):
        return b"-1"
    return value
