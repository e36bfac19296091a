"""Inception-v3 as used for FID (Heusel et al., 2017) and the Inception Score (Salimans et al., 2016).

This is the TF-slim graph `inception-2015-12-05` (Szegedy et al., 2016, "Rethinking the Inception
Architecture") that TF FID / TF-GAN evaluate with, in the layout pytorch-fid ported it to. It differs
from the torchvision Inception-v3 in three places, all reproduced here:
  * 3x3 average pools inside the mixed blocks ignore the zero padding (TF semantics);
  * the last mixed block (`Mixed_7c`) pools its `branch_pool` with a 3x3 *max* pool;
  * the classifier has 1008 outputs (ImageNet 1000 + 8 unused classes of the 2015 graph).

Outputs: `pool_3`, the 2048-d global average pool that FID uses, and the 1008 `logits` used by IS.
Input: NHWC images in [0, 1] (see `preprocess_images`), bilinearly resized to 299x299 and mapped to
[-1, 1] inside the network.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INCEPTION_IMAGE_SIZE = 299
NUM_LOGITS = 1008
POOL3_DIM = 2048
BATCHNORM_EPS = 1e-3
# torch's F.interpolate(mode="bilinear", align_corners=False, antialias=False), which pytorch-fid uses.
RESIZE_MODE = "bilinear_halfpixel_noantialias_299"

_PRECISION = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes on accelerators: features must be exact.


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm (inference statistics, eps 1e-3) -> ReLU: TF-slim's `conv2d`."""
  features: int
  kernel: int | Sequence[int]
  stride: int = 1
  padding: int | Sequence[int] = 0

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=_PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCHNORM_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x):
  # TF 'SAME' average pooling divides by the number of valid (non-padded) pixels.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x):
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b/5c/5d): 1x1, 5x5, double 3x3 and pooled branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(64, 1, name="branch1x1")(x)
    b5 = ConvBN(48, 1, name="branch5x5_1")(x)
    b5 = ConvBN(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = ConvBN(64, 1, name="branch3x3dbl_1")(x)
    b3 = ConvBN(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = ConvBN(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = ConvBN(self.pool_features, 1, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a)."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, 3, stride=2, name="branch3x3")(x)
    bd = ConvBN(64, 1, name="branch3x3dbl_1")(x)
    bd = ConvBN(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = ConvBN(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = ConvBN(192, 1, name="branch1x1")(x)
    b7 = ConvBN(c7, 1, name="branch7x7_1")(x)
    b7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = ConvBN(c7, 1, name="branch7x7dbl_1")(x)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = ConvBN(192, 1, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(192, 1, name="branch3x3_1")(x)
    b3 = ConvBN(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = ConvBN(192, 1, name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = ConvBN(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with expanded 1x3 / 3x1 branches (Mixed_7b, Mixed_7c).

  `max_pool_branch` selects the 2015 graph's max pool in Mixed_7c's pooled branch.
  """
  max_pool_branch: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(320, 1, name="branch1x1")(x)
    b3 = ConvBN(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = ConvBN(448, 1, name="branch3x3dbl_1")(x)
    bd = ConvBN(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max_pool_same(x) if self.max_pool_branch else _avg_pool_same(x)
    bp = ConvBN(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_to_inception(images: jax.Array) -> jax.Array:
  """Bilinear resize to 299x299 with half-pixel centres and no antialiasing (`RESIZE_MODE`)."""
  b, h, w, c = images.shape
  if (h, w) == (INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE):
    return images
  return jax.image.resize(images, (b, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, c),
                          method="bilinear", antialias=False)


class InceptionV3FID(nn.Module):
  """The FID Inception-v3. Input [B, H, W, 3] in [0, 1]; returns {'pool_3': [B, 2048], 'logits': [B, 1008]}."""

  @nn.compact
  def __call__(self, images):
    x = resize_to_inception(images.astype(jnp.float32))  # [B, 299, 299, 3]
    x = 2.0 * x - 1.0
    x = ConvBN(32, 3, stride=2, name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
    x = ConvBN(32, 3, name="Conv2d_2a_3x3")(x)  # [B, 147, 147, 32]
    x = ConvBN(64, 3, padding=1, name="Conv2d_2b_3x3")(x)  # [B, 147, 147, 64]
    x = _max_pool_reduce(x)  # [B, 73, 73, 64]
    x = ConvBN(80, 1, name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, 3, name="Conv2d_4a_3x3")(x)  # [B, 71, 71, 192]
    x = _max_pool_reduce(x)  # [B, 35, 35, 192]
    x = InceptionA(32, name="Mixed_5b")(x)  # [B, 35, 35, 256]
    x = InceptionA(64, name="Mixed_5c")(x)  # [B, 35, 35, 288]
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)  # [B, 17, 17, 768]
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)  # [B, 8, 8, 1280]
    x = InceptionE(name="Mixed_7b")(x)  # [B, 8, 8, 2048]
    x = InceptionE(max_pool_branch=True, name="Mixed_7c")(x)
    pool_3 = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    logits = nn.Dense(NUM_LOGITS, precision=_PRECISION, name="fc")(pool_3)  # [B, 1008]
    return {"pool_3": pool_3, "logits": logits}


@functools.lru_cache(maxsize=1)
def variable_shapes() -> dict:
  """Shapes of the FID Inception's variables ({'params', 'batch_stats'}), without running the network."""
  dummy = jax.ShapeDtypeStruct((1, INCEPTION_IMAGE_SIZE, INCEPTION_IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3FID().init, jax.random.PRNGKey(0), dummy)


def random_variables(seed: int = 0) -> dict:
  """He-initialised variables with non-trivial BatchNorm statistics, for tests only.

  Built with NumPy from `variable_shapes()`: `InceptionV3FID().init` would run (and under jit, compile)
  the full 299x299 network just to create them.
  """
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(shape.shape[:-1]))
      return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape.shape).astype(np.float32)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, shape.shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(leaf, variable_shapes())
