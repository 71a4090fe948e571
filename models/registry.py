"""Which models a worker knows: the registered specs and a bounded cache of loaded models.

A message, a replay or a promotion may only choose a model the operator registered: a
spec file inside the model folders (``Settings.model_dir_paths``), named by its model's
name (``efficientnet-lite0``), by ``name:version``, or by its path. Anything else is
refused without touching the file system (:class:`ModelNotRegistered`): a path in a
message is a request, not an instruction to open a file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Executor
from functools import partial
from pathlib import Path

from models.answers import Model
from models.backends import load_model
from models.spec import SPEC_SUFFIXES, ModelSpec, ModelSpecError, load_spec

log = logging.getLogger(__name__)

#: A reference longer than this is no model's name nor any registered path.
MAX_REF_CHARS = 512
#: A name the registry does not know makes it look at its folders again at most this often
#: (a model trained or copied in since), so unknown names in a flood of messages cost nothing.
RESCAN_EVERY = 5.0
#: Spec files looked at per folder (the folder itself and one level of sub-folders).
MAX_SPECS = 1000


class ModelNotRegistered(ModelSpecError):
    """A message, replay or promotion named a model that is not in the model folders."""

    kind = "unknown_model"


#: How many folders deep below a model folder specs are looked for: ``<folder>/<model>/model.toml``
#: is 1, ``<folder>/<team>/<model>/model.toml`` 2, one more for a version folder.
MAX_DEPTH = 3


def _spec_files(folder: Path) -> list[Path]:
    """Spec files in ``folder`` and below (at most :data:`MAX_DEPTH` levels, at most
    :data:`MAX_SPECS`), never through a link."""
    found: list[Path] = []

    def walk(where: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(where), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if len(found) >= MAX_SPECS or entry.is_symlink():
                continue
            if entry.is_file() and Path(entry.name).suffix.lower() in SPEC_SUFFIXES:
                found.append(Path(entry.path))
            elif entry.is_dir() and depth < MAX_DEPTH:
                walk(entry.path, depth + 1)

    walk(str(folder), 0)
    return found


class ModelRegistry:
    """The specs in the model folders, found by name, ``name:version`` or path.

    Thread-safe: the decode threads resolve through it as the event loop does. Scanning
    reads each spec file once (bounded, regular files only: models/spec.py); a file that
    does not read is logged and left out.
    """

    def __init__(self, folders: Iterable[Path], default: Path | None = None) -> None:
        self.folders = [Path(f).expanduser().resolve() for f in folders]
        self.default = Path(default).expanduser().resolve() if default is not None else None
        self._by_path: dict[Path, ModelSpec] = {}
        self._by_key: dict[str, ModelSpec] = {}
        self._by_name: dict[str, ModelSpec] = {}
        self._lock = threading.Lock()
        self._scanned_at: float | None = None

    def scan(self) -> None:
        """Read the folders again (blocking: call it in a thread from async code)."""
        by_path: dict[Path, ModelSpec] = {}
        for folder in self.folders:
            for path in _spec_files(folder):
                try:
                    spec = load_spec(path)
                except ModelSpecError as exc:
                    log.warning("not a usable model spec, left out of the registry: %s", exc)
                    continue
                by_path[spec.spec_path] = spec

        # Names and keys: the default's spec wins, then model.toml (the worker's format) over
        # its siblings, then the path's order: the same answer on every worker.
        def preference(spec: ModelSpec) -> tuple[bool, bool, str]:
            return (spec.spec_path != self.default, spec.spec_path.name != "model.toml", str(spec.spec_path))

        by_key: dict[str, ModelSpec] = {}
        by_name: dict[str, ModelSpec] = {}
        for spec in sorted(by_path.values(), key=preference):
            by_key.setdefault(spec.key, spec)
            by_name.setdefault(spec.name, spec)
        with self._lock:
            self._by_path, self._by_key, self._by_name = by_path, by_key, by_name
            self._scanned_at = time.monotonic()

    def lookup(self, ref: str) -> ModelSpec | None:
        """The registered spec ``ref`` names, from memory only (never blocks), or None."""
        with self._lock:
            if ref in self._by_key:
                return self._by_key[ref]
            if ref in self._by_name:
                return self._by_name[ref]
            if ref.lower().endswith(SPEC_SUFFIXES):
                return self._by_path.get(Path(os.path.abspath(ref)))
            return None

    def _may_be_registered(self, ref: str) -> bool:
        """Whether a rescan could find ``ref``: a name, or a spec path inside a model folder
        (compared without touching the file system)."""
        if not ref.lower().endswith(SPEC_SUFFIXES) or "/" not in ref:
            return True
        where = Path(os.path.abspath(ref))
        return any(where.is_relative_to(folder) for folder in self.folders)

    def resolve(self, ref: str | os.PathLike[str]) -> ModelSpec:
        """The registered spec ``ref`` names, or :class:`ModelNotRegistered` (blocking:
        a miss may rescan the folders, at most every ``RESCAN_EVERY`` seconds)."""
        text = os.fspath(ref)
        if not isinstance(text, str) or not text or len(text) > MAX_REF_CHARS or "\x00" in text:
            raise ModelNotRegistered(f"not a model name or spec path: {str(text)[:80]!r}")
        found = self.lookup(text)
        if found is None and self._may_be_registered(text):
            stale = self._scanned_at is None or time.monotonic() - self._scanned_at >= RESCAN_EVERY
            if stale:
                self.scan()
                found = self.lookup(text)
        if found is None:
            raise ModelNotRegistered(
                f"{text[:200]!r} is not a registered model: name a model in the model folders "
                f"({', '.join(str(f) for f in self.folders)}) by name, name:version or its spec's "
                "path there (IMGFLOW_MODEL_DIRS adds folders)"
            )
        return found

    async def aresolve(self, ref: str | os.PathLike[str]) -> ModelSpec:
        """:meth:`resolve` for the event loop: a lookup in memory, a rescan in a thread."""
        text = os.fspath(ref)
        if isinstance(text, str) and text and len(text) <= MAX_REF_CHARS:
            found = self.lookup(text)
            if found is not None:
                return found
        return await asyncio.to_thread(self.resolve, text)

    @property
    def specs(self) -> list[ModelSpec]:
        with self._lock:
            return list(self._by_path.values())


_registry: ModelRegistry | None = None
_registry_lock = threading.Lock()


def registry_for(folders: Iterable[Path], default: Path | None) -> ModelRegistry:
    """This process's registry of ``folders`` (one per process; a new set of folders or
    default, as tests use, makes a new one)."""
    global _registry
    folders = [Path(f).expanduser().resolve() for f in folders]
    resolved_default = Path(default).expanduser().resolve() if default is not None else None
    with _registry_lock:
        if _registry is None or _registry.folders != folders or _registry.default != resolved_default:
            _registry = ModelRegistry(folders, resolved_default)
        return _registry


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
        self._models: OrderedDict[str, Model] = OrderedDict()
        self._lock = asyncio.Lock()

    async def get(self, spec: ModelSpec) -> Model:
        key = str(spec.spec_path)
        async with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loop = asyncio.get_running_loop()
            log.info("loading model %s from %s", spec.key, spec.artefact)
            load = partial(load_model, spec, threads=self.threads)
            model = await loop.run_in_executor(self.executor, load)
            self._models[key] = model
            while len(self._models) > self.max_models:
                evicted, _ = self._models.popitem(last=False)
                log.info("evicted model %s", evicted)
            return model

    @property
    def loaded(self) -> list[ModelSpec]:
        return [m.spec for m in self._models.values()]
