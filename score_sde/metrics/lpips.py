"""LPIPS, VGG variant, v0.1 (Zhang et al., 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric"), with weights read only from local files.

The distance between two images x, y (NHWC, values in [-1, 1]) is

    d(x, y) = sum_l  mean_{h,w}  sum_c  w_l[c] * (xhat_l[h, w, c] - yhat_l[h, w, c])^2

where, for l = relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16, f_l is the activation of the scaled
input (z - shift) / scale, shift = (-.030, -.088, -.188), scale = (.458, .448, .450), and
xhat_l = f_l / (sqrt(sum_c f_l^2) + 1e-10) is unit-normalised over channels. w_l is the "lin" layer of
the released v0.1 file (a 1x1 convolution to one channel without bias; its weights are >= 0).
Gray inputs [B, H, W, 1] are repeated to three channels before the scaling layer. The inputs must be at
least 16x16 so that relu5_3 (after four 2x2 max pools, which floor odd sizes) is not empty.

Weights: two files, never downloaded, each checked against the SHA-256 of the released file:
  * `vgg16-397923af.pth` (torchvision's ImageNet VGG16, 553,433,881 bytes)
      https://download.pytorch.org/models/vgg16-397923af.pth
      keys `features.N.weight` [O, I, 3, 3] / `features.N.bias` [O] for the 13 convolutions
      N = 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; `classifier.*` is ignored.
      SHA-256 397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0 (the file name carries its
      first 8 hex digits, torch hub's convention; the full hash is the one public code pins for it).
  * `vgg.pth` (lpips v0.1 linear layers, 7,289 bytes)
      https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth
      (also shipped inside the `lpips` pip package as lpips/weights/v0.1/vgg.pth)
      keys `lin0.model.1.weight` ... `lin4.model.1.weight`, shapes [1, C, 1, 1], C = 64, 128, 256, 512, 512.
      SHA-256 a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868: not published by the
      lpips authors; it is the hash that several independent public projects pin for this file (from the
      GitHub path, from the lpips 0.1.4 wheel and from taming-transformers' / LDM's mirror of `vgg.pth`,
      which is the same file). Shapes are checked strictly as well, whatever the hash check.

Params layout (a plain pytree, so `lpips_distance` is pure and jit-able):
  {'vgg': {'features_N': {'kernel': [3, 3, I, O] (HWIO), 'bias': [O]}, ...},
   'lin': {'lin0': [C0], ..., 'lin4': [C4]}}
The linen names `features_N` keep torchvision's index N.

This module imports only `score_sde.io.torch_pickle` from the project (the torch-free .pth reader).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.io import torch_pickle
from score_sde.metrics.convert_inception import file_sha256

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILENAME
VGG16_SHA256 = "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"
LPIPS_LIN_FILENAME = "vgg.pth"
LPIPS_LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
LPIPS_LIN_SHA256 = "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"
DEFAULT_SHA256 = (VGG16_SHA256, LPIPS_LIN_SHA256)

# torchvision `vgg16().features` up to relu5_3: conv widths per stage; a 2x2 max pool between stages.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                                             (512, 512, 512))
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10

_PRECISION = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes on accelerators.


def conv_indices(stages: Sequence[Sequence[int]]) -> list[list[int]]:
  """torchvision `features` indices of the convolutions, per stage (ReLU after each, pool between)."""
  out, idx = [], 0
  for s, stage in enumerate(stages):
    out.append([])
    for _ in stage:
      out[-1].append(idx)
      idx += 2  # conv, relu
    if s < len(stages) - 1:
      idx += 1  # max pool
  return out


class VGG16Features(nn.Module):
  """VGG16 convolutions up to relu5_3, NHWC float32; returns the five taps relu1_2 ... relu5_3.

  `stages` holds the conv widths per stage (default: VGG16's); tests build a narrower net with the
  same structure.
  """
  stages: tuple[tuple[int, ...], ...] = VGG16_STAGES

  @nn.compact
  def __call__(self, x):
    taps = []
    for s, (stage, indices) in enumerate(zip(self.stages, conv_indices(self.stages))):
      if s > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
      for width, idx in zip(stage, indices):
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), precision=_PRECISION,
                    name=f"features_{idx}")(x)
        x = nn.relu(x)
      taps.append(x)
    return taps


@dataclasses.dataclass(frozen=True, eq=False)
class LPIPSWeights:
  """Converted LPIPS params (see the module docstring) and the provenance of the two files."""
  params: dict
  vgg_sha256: str
  lin_sha256: str
  vgg_source: str = ""
  lin_source: str = ""

  @property
  def sha256(self) -> str:
    """One identifier for the pair: '<vgg sha256>+<lin sha256>'."""
    return f"{self.vgg_sha256}+{self.lin_sha256}"

  def __call__(self, x, y):
    return lpips_distance(self.params, x, y)


def stages_from_params(params) -> tuple[tuple[int, ...], ...]:
  """The conv widths per stage, read from the params' shapes and the lin layers (static under jit)."""
  vgg = params["vgg"]
  order = sorted(vgg, key=lambda name: int(name.split("_")[1]))
  widths = [int(vgg[name]["kernel"].shape[-1]) for name in order]
  stages, i = [], 0
  counts = [len(stage) for stage in VGG16_STAGES]  # convs per stage: 2, 2, 3, 3, 3
  if len(widths) != sum(counts) or len(params["lin"]) != len(counts):
    raise ValueError(f"LPIPS params need {sum(counts)} VGG convs and {len(counts)} lin layers; got "
                     f"{len(widths)} and {len(params['lin'])}.")
  for n in counts:
    stages.append(tuple(widths[i:i + n]))
    i += n
  return tuple(stages)


def _to_rgb(x):
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"LPIPS expects NHWC images with 1 or 3 channels; got shape {x.shape}.")
  if x.shape[-1] == 1:  # gray: repeat to RGB (the VGG was trained on colour images)
    x = jnp.repeat(x, 3, axis=-1)
  return x


def _unit_normalise(f):
  """f / (sqrt(sum_c f^2) + 1e-10). Where every channel is 0 (a dead ReLU pixel) the value is 0 as in
  the formula, and the gradient is taken as 0 (sqrt's is infinite at 0, which would give 0 * inf = NaN)."""
  sq = jnp.sum(f * f, axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return f / (norm + NORM_EPS)


def lpips_distance(params, x, y):
  """LPIPS distance [B] between x and y, both [B, H, W, 3] (or [B, H, W, 1], repeated) in [-1, 1].

  Pure and jit-able; `params` as returned in `LPIPSWeights.params` (or `load_lpips(...).params`).
  Differentiable in x and y (use it as a perceptual loss term).
  """
  x, y = _to_rgb(x), _to_rgb(y)
  if x.shape != y.shape:
    raise ValueError(f"LPIPS inputs must have the same shape; got {x.shape} and {y.shape}.")
  stages = stages_from_params(params)
  min_size = 2 ** (len(stages) - 1)
  if min(x.shape[1:3]) < min_size:
    raise ValueError(f"LPIPS needs images of at least {min_size}x{min_size} (relu5_3 follows "
                     f"{len(stages) - 1} 2x2 max pools); got {x.shape[1]}x{x.shape[2]}.")
  shift = jnp.asarray(SHIFT, jnp.float32)
  scale = jnp.asarray(SCALE, jnp.float32)
  net = VGG16Features(stages=stages)
  variables = {"params": params["vgg"]}

  # x and y go through the network as one batch [x; y] (the convolutions gave a sample the same result
  # at either batch position on XLA:CPU, as deterministic GPU algorithms should too). The channel
  # normalisation is not position-independent once XLA has fused it (measured: the two halves of
  # [x; x] 2e-8 apart at relu4_3), so the halves are normalised by one compiled body, run twice
  # (`lax.map`, a two-step scan).
  # Identical images thus get identical features: d(x, x) == 0 and d(x, y) == d(y, x) bit for bit.
  batch = x.shape[0]
  taps = net.apply(variables, (jnp.concatenate([x, y], axis=0) - shift) / scale)
  halves = [t.reshape((2, batch) + t.shape[1:]) for t in taps]
  units = jax.lax.map(lambda ts: [_unit_normalise(t) for t in ts], halves)
  total = jnp.zeros((batch,), jnp.float32)
  for k, unit in enumerate(units):
    sq = jnp.square(unit[0] - unit[1])
    per_pixel = jnp.einsum("bhwc,c->bhw", sq, params["lin"][f"lin{k}"], precision=_PRECISION)
    total = total + jnp.mean(per_pixel, axis=(1, 2))
  return total


# ---------------------------------------------------------------------------------------------------
# Loading from local files.


_FILES = {
    "vgg": (VGG16_FILENAME, VGG16_URL, VGG16_SHA256, "torchvision's ImageNet VGG16"),
    "lin": (LPIPS_LIN_FILENAME, LPIPS_LIN_URL, LPIPS_LIN_SHA256, "the lpips v0.1 VGG linear layers"),
}


def _check_file(path, which: str, expected_sha256: str | None) -> str:
  filename, url, released, what = _FILES[which]
  if path is None or not os.path.isfile(path):
    raise FileNotFoundError(
        f"LPIPS weights file not found: {path} (expected '{filename}', {what}; SHA-256 {released}). "
        f"Get it from\n  {url}\nand pass its local path. It is never downloaded at run time.")
  sha256 = file_sha256(path)
  if expected_sha256 is not None and sha256 != expected_sha256:
    raise ValueError(
        f"SHA-256 mismatch for {path}: got {sha256}, expected {expected_sha256} ('{filename}', {what}, "
        f"from {url}). The file is corrupt, truncated or a different network; LPIPS values computed "
        "with it would not be comparable.")
  return sha256


def _vgg_params(state_dict: dict, stages, path) -> dict:
  params = {}
  expected_keys = set()
  in_ch = 3
  for stage, indices in zip(stages, conv_indices(stages)):
    for width, idx in zip(stage, indices):
      for leaf, shape in (("weight", (width, in_ch, 3, 3)), ("bias", (width,))):
        key = f"features.{idx}.{leaf}"
        expected_keys.add(key)
        if key not in state_dict:
          raise ValueError(f"{path} lacks the VGG16 tensor {key!r} (shape {shape}).")
        value = np.asarray(state_dict[key], np.float32)
        if value.shape != shape:
          raise ValueError(f"{path}: key {key!r} has shape {value.shape}; LPIPS-VGG needs {shape}.")
        params.setdefault(f"features_{idx}", {})[
            "kernel" if leaf == "weight" else "bias"] = (
                np.transpose(value, (2, 3, 1, 0)) if leaf == "weight" else value)  # OIHW -> HWIO
      in_ch = width
  last = conv_indices(stages)[-1][-1]
  for key in state_dict:
    if key in expected_keys or key.startswith("classifier."):
      continue
    if key.startswith("features.") and int(key.split(".")[1]) > last:
      continue  # beyond relu5_3 (torchvision's vgg16 has none: index 30 is a pool)
    raise ValueError(f"{path}: unexpected key {key!r}; not part of torchvision's vgg16 layout.")
  return params


def _lin_params(state_dict: dict, stages, path) -> dict:
  params = {}
  expected = {f"lin{k}.model.1.weight": (1, stage[-1], 1, 1) for k, stage in enumerate(stages)}
  for key in state_dict:
    if key not in expected:
      raise ValueError(f"{path}: unexpected key {key!r}; the lpips v0.1 VGG file holds only "
                       f"{sorted(expected)}.")
  for k, (key, shape) in enumerate(expected.items()):
    if key not in state_dict:
      raise ValueError(f"{path} lacks the lpips tensor {key!r} (shape {shape}).")
    value = np.asarray(state_dict[key], np.float32)
    if value.shape != shape:
      raise ValueError(f"{path}: key {key!r} has shape {value.shape}; LPIPS-VGG needs {shape}.")
    if np.any(value < 0):
      raise ValueError(f"{path}: key {key!r} has negative weights; LPIPS lin weights are >= 0 "
                       "(the released file's are), so this is not an LPIPS lin layer.")
    params[f"lin{k}"] = value.reshape(shape[1])
  return params


def load_lpips(vgg_path: str, lin_path: str,
               expected_sha256: tuple[str | None, str | None] | None = DEFAULT_SHA256,
               stages: tuple[tuple[int, ...], ...] = VGG16_STAGES) -> LPIPSWeights:
  """Reads the two local weight files, checks their SHA-256 and shapes, and converts them.

  Args:
    vgg_path: torchvision's `vgg16-397923af.pth`.
    lin_path: lpips' `weights/v0.1/vgg.pth`.
    expected_sha256: (vgg, lin) hashes to require; an element None skips that check, None skips both
      (only for random-weight test fixtures). Defaults to the released files' hashes.
    stages: conv widths per stage; the default is VGG16's (tests pass a narrower net).
  Raises:
    FileNotFoundError: a file is missing (the message names it and where to get it).
    ValueError: a hash mismatch, or a missing / unexpected / wrong-shape key (named in the message).
  """
  vgg_expected, lin_expected = (None, None) if expected_sha256 is None else expected_sha256
  stages = tuple(tuple(int(w) for w in stage) for stage in stages)
  vgg_sha = _check_file(vgg_path, "vgg", vgg_expected)
  lin_sha = _check_file(lin_path, "lin", lin_expected)
  vgg = _vgg_params(torch_pickle.load_torch_state_dict(vgg_path), stages, vgg_path)
  lin = _lin_params(torch_pickle.load_torch_state_dict(lin_path), stages, lin_path)
  params = jax.tree.map(jnp.asarray, {"vgg": vgg, "lin": lin})
  return LPIPSWeights(params=params, vgg_sha256=vgg_sha, lin_sha256=lin_sha, vgg_source=str(vgg_path),
                      lin_source=str(lin_path))
