"""Every MongoDB client imgflow opens has the same options (imgflow/mongo.py)."""

from __future__ import annotations

import asyncio

from imgflow.mongo import connect, connect_async


def test_clients_are_tz_aware_and_journaled_without_connecting():
    sync = connect("mongodb://127.0.0.1:9")  # nothing listens: creating a client opens nothing
    try:
        assert sync.codec_options.tz_aware
        assert sync.write_concern.document == {"j": True}
        assert sync.options.server_selection_timeout == 5
    finally:
        sync.close()

    async def check_async() -> None:
        client = connect_async("mongodb://127.0.0.1:9", serverSelectionTimeoutMS=1000)
        try:
            assert client.codec_options.tz_aware and client.write_concern.document == {"j": True}
            assert client.options.server_selection_timeout == 1
        finally:
            await client.close()

    asyncio.run(check_async())
