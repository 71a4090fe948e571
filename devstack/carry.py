"""Carry the tables over to a fresh embedded broker, in a process of its own.

``python -m devstack.carry BOOTSTRAP PREFIX`` reads every ``PREFIX*-changelog`` topic from the
broker at BOOTSTRAP, compacted (``imgflow.broker.read_changelogs``), prints ``read N``, then
waits for a line on standard input: ``write`` once a fresh broker listens at the same address
(the launcher's roll-over, ``devstack/launcher.py``) writes them there with the count positions
rebased (``devstack/rebase.py``) and prints ``wrote N``; anything else, or the end of the input,
exits without writing. A process of its own so that the launcher, which runs for days, never
holds a table: what the carry allocated is given back to the machine when it exits.
"""

from __future__ import annotations

import asyncio
import sys

import click

from devstack.kafka import read_changelogs, write_changelogs
from devstack.rebase import rebase
from imgflow.broker import wait_for_broker

#: Seconds each half may take (a broker that stopped answering ends the carry, not the roll).
TIMEOUT = 240.0


@click.command()
@click.argument("bootstrap")
@click.argument("prefix")
def main(bootstrap: str, prefix: str) -> None:
    """Carry the PREFIX*-changelog topics at BOOTSTRAP over to a fresh broker there."""
    sys.exit(carry(bootstrap, prefix))


def carry(bootstrap: str, prefix: str) -> int:
    logs = asyncio.run(asyncio.wait_for(read_changelogs(bootstrap, prefix), TIMEOUT))
    print(f"read {sum(len(log) for log in logs)}", flush=True)
    if sys.stdin.readline().strip() != "write":
        return 1

    async def write() -> int:
        await wait_for_broker([bootstrap])
        return await write_changelogs(bootstrap, logs, rebase)

    print(f"wrote {asyncio.run(asyncio.wait_for(write(), TIMEOUT))}", flush=True)
    return 0


if __name__ == "__main__":
    main()
