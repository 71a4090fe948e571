"""Which models a worker knows: spec lookups and a bounded cache of loaded models."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import Executor
from functools import lru_cache, partial
from pathlib import Path

from models.backends import Classifier, load_classifier
from models.spec import ModelSpec, load_spec

log = logging.getLogger(__name__)


@lru_cache(maxsize=128)
def _spec(path: str) -> ModelSpec:
    return load_spec(Path(path))


def spec_for(path: str | Path) -> ModelSpec:
    """The spec at ``path`` (cached: specs are read once per worker)."""
    return _spec(str(Path(path).resolve()))


class ModelCache:
    """Loaded classifiers keyed by spec path, least recently used evicted.

    The default model loads on worker start; replays may pin others, which load
    on first use. Loading and prediction share one executor thread, so a model
    is never used while another is being loaded into the same TensorFlow runtime.
    """

    def __init__(self, executor: Executor, max_models: int = 3, threads: int | None = None) -> None:
        self.executor = executor
        self.threads = threads
        self.max_models = max_models
        self._models: OrderedDict[str, Classifier] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, spec: ModelSpec) -> Classifier:
        key = str(spec.spec_path)
        async with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loop = asyncio.get_running_loop()
            log.info("loading model %s from %s", spec.key, spec.artefact)
            load = partial(load_classifier, spec, threads=self.threads)
            model = await loop.run_in_executor(self.executor, load)
            self._models[key] = model
            while len(self._models) > self.max_models:
                evicted, _ = self._models.popitem(last=False)
                log.info("evicted model %s", evicted)
            return model

    @property
    def loaded(self) -> list[ModelSpec]:
        return [m.spec for m in self._models.values()]
