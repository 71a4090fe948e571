"""What a worker holds open, in one Faust service started before its agents and closed after them.

- ``store``: the one MongoDB client of the worker (imgflow/mongo.py options),
  shared by the store and failures stages and the web views; indexes are
  created on first use, with retry, so a worker starts while MongoDB is down.
- ``models``: the bounded cache of loaded classifiers, with the one thread that
  owns TensorFlow (loads and predictions never overlap); the default model
  starts loading when the worker starts, and ``/health/`` is ready once it is in.
- ``active``: which model is the default for new images, following promotions on the
  control topic (imgflow/control.py).
- ``decode_pool``: the threads that read and decode images.
- ``http``: one client session for the calls a worker makes to the others
  (``/counts/`` fan-out), sending the API token when reads are protected.

Importing this module opens nothing; :class:`Resources` does its I/O in
``on_start`` and gives everything back in ``on_stop``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from mode import Service

from imgflow.auth import auth_headers
from imgflow.control import ActiveModel
from imgflow.frames import FrameStore
from imgflow.lag import AgeProbe
from imgflow.people import People
from imgflow.settings import Settings
from imgflow.storage import Store
from imgflow.tensors import TensorStore
from models.registry import ModelCache, registry_for

log = logging.getLogger(__name__)

#: Seconds a worker waits for another worker's answer (``/counts/`` fan-out).
FANOUT_TIMEOUT = 5.0


class Resources(Service):
    """The worker's clients, threads and model cache (see the module docstring)."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="imgflow-model")
        self.models = ModelCache(self.model_thread, max_models=3, threads=settings.model_threads or None)
        #: The models a message may name (models/registry.py), read in a thread on start.
        self.registry = registry_for(settings.model_dir_paths, settings.model_spec_path)
        #: The default model for new images, following promotions (imgflow/control.py).
        self.active = ActiveModel(settings, self.models, self.registry, loop=self.loop, beacon=self.beacon)
        self.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="imgflow-decode")
        self._store: Store | None = None
        self._tensors: TensorStore | None = None
        self._frames: FrameStore | None = None
        self._people: People | None = None
        #: Reads how old the oldest unprocessed message of a lagging partition is (imgflow/lag.py).
        self.age_probe = AgeProbe(settings.bootstrap_servers)
        self._http: aiohttp.ClientSession | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("worker resources are not started")
        return self._store

    @property
    def tensors(self) -> TensorStore:
        """Pixels stored beside their messages (imgflow/tensors.py): every worker can read them."""
        if self._tensors is None:
            self._tensors = TensorStore(self.store.sync_db, self.settings.tensor_ttl)
        return self._tensors

    @property
    def frames(self) -> FrameStore:
        """Frames kept for previews and replays (imgflow/frames.py): every worker can read them."""
        if self._frames is None:
            self._frames = FrameStore(
                self.store.sync_db, self.settings.frames_keep, self.settings.frames_keep_total
            )
        return self._frames

    @property
    def people(self) -> People:
        """Enrolled people, for face models to name who they see (imgflow/people.py)."""
        if self._people is None:
            self._people = People(self.store.sync_db)
        return self._people

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("worker resources are not started")
        return self._http

    async def on_start(self) -> None:
        await asyncio.to_thread(self.registry.scan)
        self._store = Store(self.settings.mongo_url, self.settings.mongo_db)
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FANOUT_TIMEOUT), headers=auth_headers(self.settings)
        )
        # In the background: the consumer joins its group meanwhile.
        self.add_future(self._store.ready())
        await self.add_runtime_dependency(self.active)
        self.add_future(self._load_default_model())

    async def _load_default_model(self) -> None:
        # The default is the promoted model if there is one: known once the control topic is read.
        default = await self.active.default()
        try:
            await self.models.get(await self.registry.aresolve(default))
        except Exception:
            # The classify stage turns every image into model_unavailable; /health/ stays "starting".
            log.exception("the default model %s did not load", default)

    async def on_stop(self) -> None:
        await self.age_probe.close()
        if self._http is not None:
            await self._http.close()
        if self._store is not None:
            await self._store.close()
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.model_thread.shutdown(wait=False, cancel_futures=True)
