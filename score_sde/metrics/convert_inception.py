"""Loads pytorch-fid's Inception weights (`pt_inception-2015-12-05-6726825d.pth`) into `InceptionV3FID`.

The file is read from local disk only, its SHA-256 is checked, and it is converted without torch
(see `torch_pickle`). Nothing is ever downloaded.

Key layout of the file (torchvision module names) -> linen variables:
  <block>.conv.weight [O, I, kh, kw]   -> params/<block>/conv/kernel [kh, kw, I, O]
  <block>.bn.weight / .bn.bias         -> params/<block>/bn/scale / bias
  <block>.bn.running_mean / _var       -> batch_stats/<block>/bn/mean / var
  <block>.bn.num_batches_tracked       -> (dropped: training bookkeeping)
  fc.weight [1008, 2048] / fc.bias     -> params/fc/kernel [2048, 1008] / bias
where <block> is e.g. `Conv2d_1a_3x3` or `Mixed_5b.branch1x1`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

import jax
import numpy as np

from score_sde.io import torch_pickle
from score_sde.metrics import inception

INCEPTION_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_WEIGHTS_FILENAME)
INCEPTION_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_WEIGHTS_ENV = "SCORE_SDE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FLAG = "--inception_weights"


@dataclasses.dataclass(frozen=True)
class InceptionWeights:
  """Converted variables ({'params', 'batch_stats'}) plus the provenance recorded with every metric."""
  variables: dict
  sha256: str
  source: str


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(chunk_bytes):
      digest.update(chunk)
  return digest.hexdigest()


def _missing_weights_message(reason: str) -> str:
  return (
      f"{reason}\nThe FID Inception-v3 weights file '{INCEPTION_WEIGHTS_FILENAME}' is needed "
      f"(SHA-256 {INCEPTION_WEIGHTS_SHA256}). It is published by pytorch-fid at\n  {INCEPTION_WEIGHTS_URL}\n"
      f"Download it yourself (nothing is downloaded at run time) and point to it with "
      f"{INCEPTION_WEIGHTS_FLAG}=/path/to/{INCEPTION_WEIGHTS_FILENAME} or the environment variable "
      f"{INCEPTION_WEIGHTS_ENV}.")


def resolve_weights_path(path: str | None = None) -> str:
  """The weights path from the argument, else from $SCORE_SDE_INCEPTION_WEIGHTS; errors if absent."""
  path = path or os.environ.get(INCEPTION_WEIGHTS_ENV)
  if not path:
    raise FileNotFoundError(_missing_weights_message(
        f"No Inception weights given ({INCEPTION_WEIGHTS_FLAG} unset and ${INCEPTION_WEIGHTS_ENV} unset)."))
  if not os.path.isfile(path):
    raise FileNotFoundError(_missing_weights_message(f"Inception weights file not found: {path}"))
  return path


def _flax_leaf(torch_key: str) -> tuple[str, tuple[str, ...], bool] | None:
  """torch key -> (collection, linen path, transpose?); None for keys that carry no weights."""
  *path, module, leaf = torch_key.split(".")
  if module == "fc":
    path = [*path, "fc"]
    table = {"weight": ("params", "kernel", True), "bias": ("params", "bias", False)}
  elif module == "conv":
    path = [*path, "conv"]
    table = {"weight": ("params", "kernel", True)}
  elif module == "bn":
    path = [*path, "bn"]
    table = {"weight": ("params", "scale", False), "bias": ("params", "bias", False),
             "running_mean": ("batch_stats", "mean", False), "running_var": ("batch_stats", "var", False),
             "num_batches_tracked": None}
  else:
    raise ValueError(f"Unexpected key {torch_key!r}: not part of the FID Inception-v3 layout.")
  if leaf not in table:
    raise ValueError(f"Unexpected key {torch_key!r}: not part of the FID Inception-v3 layout.")
  if table[leaf] is None:
    return None
  collection, name, transpose = table[leaf]
  return collection, (*path, name), transpose


def _torch_to_linen_layout(array: np.ndarray, transpose: bool) -> np.ndarray:
  if not transpose:
    return array
  if array.ndim == 4:  # conv: OIHW -> HWIO
    return np.transpose(array, (2, 3, 1, 0))
  return array.T  # dense: [out, in] -> [in, out]


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
  """Maps a pytorch-fid Inception state dict to `InceptionV3FID` variables, checking every name and shape."""
  expected = inception.variable_shapes()
  expected_flat = {tuple(k.key for k in path): leaf.shape
                   for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
  flat = {}
  for key, value in state_dict.items():
    target = _flax_leaf(key)
    if target is None:
      continue
    collection, path, transpose = target
    full = (collection, *path)
    if full not in expected_flat:
      raise ValueError(f"Key {key!r} maps to {'/'.join(full)}, which the FID Inception does not have.")
    array = _torch_to_linen_layout(np.asarray(value, dtype=np.float32), transpose)
    if array.shape != expected_flat[full]:
      raise ValueError(f"Key {key!r} has shape {np.shape(value)}; the FID Inception needs "
                       f"{expected_flat[full]} (after layout conversion) for {'/'.join(full)}.")
    flat[full] = array
  missing = sorted("/".join(k) for k in expected_flat.keys() - flat.keys())
  if missing:
    raise ValueError(f"The weights file lacks {len(missing)} FID Inception tensors, e.g. {missing[:5]}.")
  variables: dict = {}
  for full, array in flat.items():
    node = variables
    for name in full[:-1]:
      node = node.setdefault(name, {})
    node[full[-1]] = array
  return variables


def load_inception_weights(path: str | None = None,
                           expected_sha256: str | None = INCEPTION_WEIGHTS_SHA256) -> InceptionWeights:
  """Loads and converts the local FID Inception weights after checking the file's SHA-256.

  Args:
    path: the `.pth` file; defaults to $SCORE_SDE_INCEPTION_WEIGHTS.
    expected_sha256: the published hash; pass None only for converted test fixtures.
  """
  path = resolve_weights_path(path)
  sha256 = file_sha256(path)
  if expected_sha256 is not None and sha256 != expected_sha256:
    raise ValueError(
        f"SHA-256 mismatch for {path}: got {sha256}, expected {expected_sha256} "
        f"('{INCEPTION_WEIGHTS_FILENAME}' from {INCEPTION_WEIGHTS_URL}). The file is corrupt, truncated "
        "or a different network; FID numbers computed with it would not be comparable. Point "
        f"{INCEPTION_WEIGHTS_FLAG} or ${INCEPTION_WEIGHTS_ENV} at the published file.")
  variables = convert_state_dict(torch_pickle.load_torch_state_dict(path))
  return InceptionWeights(variables=jax.tree.map(jax.numpy.asarray, variables), sha256=sha256, source=path)
