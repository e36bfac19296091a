"""Read a `torch.save` file (a state dict, or a checkpoint of nested dicts and lists of tensors) into
NumPy arrays without importing torch. The one reader of `.pth` files: checkpoint conversion
(`score_sde.io.convert`) and the Inception weights (`score_sde.metrics.convert_inception`) use it.

Two on-disk formats exist:
  * zip (torch >= 1.6): `<root>/data.pkl` is a pickle whose tensors refer, through persistent ids
    ('storage', StorageType, key, location, numel), to raw little-endian buffers `<root>/data/<key>`;
  * legacy (before 1.6): five pickles in a row (magic number, protocol version, system info, the object,
    the list of storage keys) followed, for each key in that list, by an int64 element count and the
    raw buffer.
In both, a tensor is pickled as a call `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
The restricted unpickler below resolves only the handful of globals that tensors and plain containers
need, so loading a file cannot execute arbitrary code. With `opaque_globals=True` any other global
(e.g. the pickled PyTorch Lightning callbacks and NumPy scalars of a Stable Diffusion `.ckpt`)
becomes an inert `OpaqueObject` that only records its name and arguments, so the tensors of such
files can be read; nothing from the file is imported or called.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> NumPy dtype of its elements ('bfloat16' is widened to float32 on read).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
  """Stand-in for `torch.<X>Storage` classes: remembers the element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
  """A storage seen in the pickle; `data` (flat array) is attached once the buffer is read."""

  def __init__(self, storage_type: _StorageType, key: str, numel: int):
    self.storage_type = storage_type
    self.key = key
    self.numel = numel
    self.data: np.ndarray | None = None
    self.view_of: tuple[_StorageRef, int] | None = None  # (root storage, element offset) for legacy views


class _PendingTensor:
  """A tensor whose storage bytes may come after the pickle (legacy format)."""

  def __init__(self, storage: _StorageRef, offset: int, size, stride):
    self.storage = storage
    self.offset = int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)

  def materialize(self) -> np.ndarray:
    flat = self.storage.data
    if flat is None:
      raise ValueError(f"Storage {self.storage.key!r} has no data in the file: the file is truncated or corrupt.")
    if self.storage.storage_type.name == "BFloat16Storage":
      flat = (flat.astype(np.uint32) << 16).view(np.float32)
    if not self.size:
      return np.array(flat[self.offset])
    extent = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
    if min(self.size) > 0 and extent > flat.size:
      raise ValueError(f"Tensor of size {self.size} overruns its storage {self.storage.key!r} ({flat.size} elements).")
    strides = tuple(s * flat.itemsize for s in self.stride)
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size, strides=strides)
    return np.array(view)  # a contiguous copy


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): tuple,
}


class OpaqueObject:
  """Stand-in for an object of a global the reader does not resolve (`opaque_globals=True`): it keeps
  the global's name (`global_name`), its constructor arguments (`args`) and pickled state (`state`)."""
  global_name = "?"

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.args, obj.state = args, None
    return obj

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"OpaqueObject({self.global_name})"


def _opaque_class(module: str, name: str) -> type:
  return type(name, (OpaqueObject,), {"global_name": f"{module}.{name}"})


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickler that knows torch storages and tensors and refuses every other global (or, with
  `opaque_globals`, replaces it by an inert `OpaqueObject` subclass)."""

  def __init__(self, file, storages: dict, opaque_globals: bool = False):
    super().__init__(file, encoding="utf-8")
    self._storages = storages
    self._opaque_globals = opaque_globals

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      if self._opaque_globals:
        return _opaque_class(module, name)
      raise pickle.UnpicklingError(
          f"Refusing to load global {module}.{name}: only tensors and plain containers can be "
          "read without torch.") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"Unsupported persistent id {pid!r} in a torch file.")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) > 5 else None
    key = str(key)
    if key not in self._storages:
      self._storages[key] = _StorageRef(storage_type, key, int(numel))
    if view is not None:  # legacy storage views: (view_key, element offset, size)
      view_key, offset, view_size = view
      root = self._storages[key]
      ref = _StorageRef(storage_type, str(view_key), int(view_size))
      ref.view_of = (root, int(offset))
      self._storages[str(view_key)] = ref
      return ref
    return self._storages[key]


def _materialize(obj):
  if isinstance(obj, _PendingTensor):
    return obj.materialize()
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v) for v in obj)
  return obj


def _resolve_views(storages: dict) -> None:
  for ref in storages.values():
    if ref.view_of is not None:
      root, offset = ref.view_of
      ref.data = root.data[offset:offset + ref.numel]


def _load_zip(path: str, opaque_globals: bool = False):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl_names = [n for n in names if n.endswith("data.pkl")]
    if len(pkl_names) != 1:
      raise ValueError(f"{path}: a torch zip file holds exactly one '*/data.pkl'; found {pkl_names}.")
    root = pkl_names[0][: -len("data.pkl")]
    big_endian = (root + "byteorder" in names and archive.read(root + "byteorder").strip() == b"big")
    storages: dict = {}
    obj = _StateDictUnpickler(io.BytesIO(archive.read(pkl_names[0])), storages,
                              opaque_globals).load()
    for key, ref in storages.items():
      if ref.view_of is not None:
        continue
      dtype = ref.storage_type.dtype.newbyteorder(">" if big_endian else "<")
      raw = archive.read(f"{root}data/{key}")
      ref.data = np.frombuffer(raw, dtype=dtype, count=ref.numel).astype(ref.storage_type.dtype)
  _resolve_views(storages)
  return _materialize(obj)


def _load_legacy(path: str, opaque_globals: bool = False):
  with open(path, "rb") as f:
    # Every pickle in the file goes through the restricted unpickler, the small header ones too.
    load_plain = lambda: _StateDictUnpickler(f, {}).load()
    try:
      magic = load_plain()
    except Exception as e:
      raise ValueError(f"{path} is neither a torch zip file nor a legacy torch file ({e}).") from e
    if magic != _LEGACY_MAGIC_NUMBER:
      raise ValueError(f"{path} is not a torch file (bad magic number).")
    version = load_plain()
    if version != _LEGACY_PROTOCOL_VERSION:
      raise ValueError(f"{path}: unsupported legacy torch protocol version {version}.")
    sys_info = load_plain()
    if not sys_info.get("little_endian", True):
      raise ValueError(f"{path} was written on a big-endian machine; not supported.")
    storages: dict = {}
    obj = _StateDictUnpickler(f, storages, opaque_globals).load()
    storage_keys = load_plain()
    for key in storage_keys:
      ref = storages[str(key)]
      (numel,) = struct.unpack("<q", f.read(8))
      dtype = ref.storage_type.dtype
      raw = f.read(numel * dtype.itemsize)
      if len(raw) != numel * dtype.itemsize:
        raise ValueError(f"{path} is truncated (storage {key!r}).")
      ref.data = np.frombuffer(raw, dtype=dtype)
  _resolve_views(storages)
  return _materialize(obj)


def load_torch_file(path: str, *, opaque_globals: bool = False):
  """Loads a `torch.save` file (zip or legacy format), tensors as np.ndarray, without torch.
  `opaque_globals`: read objects of other classes as inert `OpaqueObject`s instead of failing."""
  if zipfile.is_zipfile(path):
    return _load_zip(path, opaque_globals)
  return _load_legacy(path, opaque_globals)


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a `torch.save`d state dict (zip or legacy format) as {name: np.ndarray}, without torch."""
  obj = load_torch_file(path)
  if not isinstance(obj, dict):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping name -> tensor).")
  return obj
