"""A minimal `torch.save` writer for tests, without torch.

The pickle is written opcode by opcode (protocol 2, as torch.save), so that it names
`torch._utils._rebuild_tensor_v2` and the `torch.<X>Storage` classes as globals without torch being
importable. Layouts:
  * zip (torch >= 1.6): `<root>/data.pkl`, `<root>/byteorder`, `<root>/data/<key>`, `<root>/version`;
  * legacy (before 1.6, pytorch-fid's 2019 release): five pickles (magic number, protocol version,
    system info, the object, the storage keys), then per storage an int64 element count and its bytes.
In both, a tensor pickles as `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
with the storage as the persistent id ('storage', StorageType, key, location, numel[, view]).

`save` writes any tree of dicts/lists/tuples/scalars whose array leaves become tensors;
`write_inception_weights` writes linen `InceptionV3FID` variables as a pytorch-fid-layout weights file.
"""
import collections
import pickle
import struct
import zipfile
from typing import NamedTuple

import jax
import numpy as np

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage"}


class Tensor(NamedTuple):
  """A tensor viewing storage `key` (`numel` elements of `storage_name`); offset and strides in elements."""
  storage_name: str
  key: str
  numel: int
  offset: int
  shape: tuple
  stride: tuple


def pickle_global(module, name):
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _dump(obj, out: bytearray, legacy: bool) -> None:
  """Appends the protocol-2 opcodes that build `obj`."""
  if isinstance(obj, Tensor):
    out += pickle_global("torch._utils", "_rebuild_tensor_v2") + b"("  # MARK of the argument tuple
    out += (b"(" + _encode("storage") + pickle_global("torch", obj.storage_name) + _encode(obj.key)
            + _encode("cpu") + _encode(obj.numel)
            + (b"N" if legacy else b"")  # legacy persistent ids carry a view slot
            + b"tQ")  # TUPLE, BINPERSID
    for arg in (obj.offset, tuple(obj.shape), tuple(obj.stride), False):
      _dump(arg, out, legacy)
    out += pickle_global("collections", "OrderedDict") + b")R"  # backward hooks
    out += b"tR"  # TUPLE, REDUCE
  elif isinstance(obj, collections.OrderedDict):
    out += pickle_global("collections", "OrderedDict") + b")R"
    _dump_items(obj, out, legacy)
    if hasattr(obj, "_metadata"):  # Module.state_dict() sets it; pickle restores it with BUILD
      out += b"}"
      _dump_items(obj._metadata, out, legacy)  # pylint: disable=protected-access
      out += b"b"
  elif isinstance(obj, dict):
    out += b"}"
    _dump_items(obj, out, legacy)
  elif isinstance(obj, list):
    out += b"]("
    for v in obj:
      _dump(v, out, legacy)
    out += b"e"  # APPENDS
  elif isinstance(obj, tuple):
    out += b"("
    for v in obj:
      _dump(v, out, legacy)
    out += b"t"
  else:
    out += _encode(obj)


def _dump_items(mapping, out, legacy):
  out += b"("
  for k, v in mapping.items():
    _dump(k, out, legacy)
    _dump(v, out, legacy)
  out += b"u"  # SETITEMS


def _encode(value) -> bytes:
  if value is None:
    return b"N"
  if isinstance(value, (bool, np.bool_)):
    return b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE
  if isinstance(value, (int, np.integer)):
    value = int(value)
    if -2**31 <= value < 2**31:
      return b"J" + struct.pack("<i", value)  # BININT
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1
  if isinstance(value, (float, np.floating)):
    return b"G" + struct.pack(">d", float(value))  # BINFLOAT
  if isinstance(value, str):
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE
  raise TypeError(f"torch_save cannot write a {type(value).__name__}")


def _with_tensors(obj, storages: list):
  """`obj` with each array leaf replaced by a Tensor over a new storage appended to `storages`."""
  if isinstance(obj, Tensor):
    return obj
  if isinstance(obj, np.ndarray):
    a = obj if obj.flags.c_contiguous or obj.flags.f_contiguous else np.ascontiguousarray(obj)
    key = f"t{len(storages)}"
    storages.append((key, a.ravel(order="K")))  # memory order, so Fortran strides survive
    return Tensor(_STORAGE_NAMES[a.dtype], key, a.size, 0, a.shape,
                  tuple(s // a.itemsize for s in a.strides))
  if isinstance(obj, collections.OrderedDict):
    out = collections.OrderedDict((k, _with_tensors(v, storages)) for k, v in obj.items())
    if hasattr(obj, "_metadata"):
      out._metadata = obj._metadata  # pylint: disable=protected-access
    return out
  if isinstance(obj, dict):
    return {k: _with_tensors(v, storages) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_with_tensors(v, storages) for v in obj)
  return obj


def _pickle(obj, legacy):
  out = bytearray(b"\x80\x02")  # PROTO 2
  _dump(obj, out, legacy)
  return bytes(out + b".")  # STOP


def _little_endian(flat):
  return flat.astype(flat.dtype.newbyteorder("<")).tobytes()


def save(path, obj, storages=(), legacy=False, root="archive"):
  """torch.save(obj, path) of a tree whose array leaves are tensors (Tensor leaves view `storages`).

  `storages`: (key, flat array) pairs for the Tensor leaves; every array leaf gets its own storage.
  """
  storages = list(storages)
  obj = _with_tensors(obj, storages)
  if legacy:
    with open(path, "wb") as f:
      f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
      f.write(pickle.dumps(1001, protocol=2))
      f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2))
      f.write(_pickle(obj, legacy=True))
      f.write(pickle.dumps([key for key, _ in storages], protocol=2))
      for _, flat in storages:
        f.write(struct.pack("<q", flat.size))
        f.write(_little_endian(flat))
    return
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{root}/data.pkl", _pickle(obj, legacy=False))
    zf.writestr(f"{root}/byteorder", "little")
    for key, flat in storages:
      zf.writestr(f"{root}/data/{key}", _little_endian(flat))
    zf.writestr(f"{root}/version", "3\n")


def state_dict(entries):
  """A `Module.state_dict()`-like OrderedDict (with `_metadata`) from (name, *Tensor fields) rows."""
  sd = collections.OrderedDict((name, Tensor(*fields)) for name, *fields in entries)
  sd._metadata = collections.OrderedDict([("", {"version": 1})])  # pylint: disable=protected-access
  return sd


def contiguous_entries(tensors):
  """(entries, storages) for `write_torch_zip`: one contiguous storage per array of `tensors`."""
  entries, storages = [], []
  for i, (name, value) in enumerate(tensors.items()):
    value = np.ascontiguousarray(value)
    stride = [int(np.prod(value.shape[j + 1:])) for j in range(value.ndim)]
    entries.append((name, _STORAGE_NAMES[value.dtype], str(i), value.size, 0, value.shape, stride))
    storages.append((str(i), value.reshape(-1)))
  return entries, storages


def write_torch_zip(path, entries, storages):
  save(path, state_dict(entries), storages)


def write_torch_legacy(path, entries, storages):
  save(path, state_dict(entries), storages, legacy=True)


_TORCH_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def torch_state_dict_from_linen(variables) -> dict:
  """The inverse of `convert_inception.convert_state_dict`: linen variables -> pytorch-fid keys and layouts."""
  sd = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    collection, *modules, name = (k.key for k in path)
    array = np.asarray(leaf, np.float32)
    if name == "kernel":
      array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T  # HWIO -> OIHW, [in, out] -> [out, in]
    sd[".".join([*modules, _TORCH_NAMES[collection, name]])] = np.ascontiguousarray(array)
  return sd


def write_inception_weights(path, variables) -> None:
  """Writes `variables` as a pytorch-fid-layout `.pth` (zip format)."""
  write_torch_zip(path, *contiguous_entries(torch_state_dict_from_linen(variables)))
