"""A minimal `torch.save` writer for tests, without torch: protocol-2 pickle opcodes written by hand,
in the zip layout (torch >= 1.6) and in the legacy layout that pytorch-fid's 2019 release uses.

`write_inception_weights` writes linen `InceptionV3FID` variables as a pytorch-fid-layout weights file.
"""
import pickle
import struct
import zipfile

import jax
import numpy as np


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage"}


def pickle_global(module, name):
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _str(s):
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _int(i):
  return b"J" + struct.pack("<i", i)  # BININT


def _tuple(ints):
  return b"(" + b"".join(_int(i) for i in ints) + b"t"  # MARK ... TUPLE


def _tensor(storage_name, storage_key, numel, offset, shape, stride, legacy):
  pid = [_str("storage"), pickle_global("torch", storage_name), _str(storage_key), _str("cpu"), _int(numel)]
  if legacy:
    pid.append(b"N")  # no view metadata
  return (pickle_global("torch._utils", "_rebuild_tensor_v2") + b"("
          + b"(" + b"".join(pid) + b"t" + b"Q"  # persistent id tuple, BINPERSID
          + _int(offset) + _tuple(shape) + _tuple(stride) + b"\x89"  # NEWFALSE: requires_grad
          + pickle_global("collections", "OrderedDict") + b")R"  # backward hooks
          + b"tR")


def _state_dict_pickle(tensors, legacy):
  """tensors: list of (name, storage_name, storage_key, storage_numel, offset, shape, stride)."""
  out = bytearray(b"\x80\x02" + pickle_global("collections", "OrderedDict") + b")R(")
  for name, storage_name, key, numel, offset, shape, stride in tensors:
    out += _str(name) + _tensor(storage_name, key, numel, offset, shape, stride, legacy)
  out += b"u"  # SETITEMS
  # state_dict() sets `_metadata` on the OrderedDict; pickle restores it with BUILD.
  out += b"}" + _str("_metadata") + b"}" + _str("") + b"}" + _str("version") + _int(1) + b"sss" + b"b"
  out += b"."  # STOP
  return bytes(out)


def contiguous_entries(state_dict):
  entries, storages = [], []
  for i, (name, value) in enumerate(state_dict.items()):
    value = np.ascontiguousarray(value)
    stride = [int(np.prod(value.shape[j + 1:])) for j in range(value.ndim)]
    entries.append((name, _STORAGE_NAMES[value.dtype], str(i), value.size, 0, value.shape, stride))
    storages.append((str(i), value.reshape(-1)))
  return entries, storages


def write_torch_zip(path, entries, storages):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr("archive/data.pkl", _state_dict_pickle(entries, legacy=False))
    zf.writestr("archive/byteorder", "little")
    for key, flat in storages:
      zf.writestr(f"archive/data/{key}", flat.astype(flat.dtype.newbyteorder("<")).tobytes())
    zf.writestr("archive/version", "3\n")


def write_torch_legacy(path, entries, storages):
  with open(path, "wb") as f:
    f.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
    f.write(pickle.dumps(1001, protocol=2))
    f.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2))
    f.write(_state_dict_pickle(entries, legacy=True))
    f.write(pickle.dumps([key for key, _ in storages], protocol=2))
    for _, flat in storages:
      f.write(struct.pack("<q", flat.size))
      f.write(flat.astype(flat.dtype.newbyteorder("<")).tobytes())


_TORCH_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def torch_state_dict_from_linen(variables) -> dict:
  """The inverse of `convert_inception.convert_state_dict`: linen variables -> pytorch-fid keys and layouts."""
  state_dict = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    collection, *modules, name = (k.key for k in path)
    array = np.asarray(leaf, np.float32)
    if name == "kernel":
      array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T  # HWIO -> OIHW, [in, out] -> [out, in]
    state_dict[".".join([*modules, _TORCH_NAMES[collection, name]])] = np.ascontiguousarray(array)
  return state_dict


def write_inception_weights(path, variables) -> None:
  """Writes `variables` as a pytorch-fid-layout `.pth` (zip format)."""
  write_torch_zip(path, *contiguous_entries(torch_state_dict_from_linen(variables)))
