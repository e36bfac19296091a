"""Inception features of images, and dataset statistics built through the very same code path.

Reference statistics (`compute_dataset_stats`) and sample features (`features_from_images`) both go
through `_inception_batches`, so preprocessing (uint8 -> [0, 1], gray -> RGB, resize, [-1, 1]) cannot drift
between the two sides of an FID.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import jax
import numpy as np

from score_sde.metrics import fid, inception
from score_sde.metrics.convert_inception import InceptionWeights

FEATURE_SPACE = "inception_v3_2015_12_05_pool3"


@jax.jit
def _inception_forward(variables, images):
  return inception.InceptionV3FID().apply(variables, images)


def to_unit_float(images) -> np.ndarray:
  """NHWC uint8 in [0, 255] or float in [0, 1] -> float32 [B, H, W, 3] in [0, 1]."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Expected NHWC images with 1 or 3 channels; got shape {images.shape}.")
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  else:
    images = images.astype(np.float32)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
      raise ValueError(f"Float images must lie in [0, 1]; got range [{lo:.3g}, {hi:.3g}]. "
                       "Map centred data with (x + 1) / 2, or pass uint8.")
    images = np.clip(images, 0.0, 1.0)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def iterate_batches(images, batch_size: int) -> Iterator[np.ndarray]:
  """Splits an [N, H, W, C] array into batches; an iterable of batches is passed through."""
  if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
    for start in range(0, images.shape[0], batch_size):
      yield images[start:start + batch_size]
  else:
    yield from images


def _inception_batches(images, weights: InceptionWeights, batch_size: int) -> Iterator[dict]:
  """Yields {'pool_3': [b, 2048], 'logits': [b, 1008]} per batch (fixed compiled batch size)."""
  for batch in iterate_batches(images, batch_size):
    batch = to_unit_float(batch)
    for start in range(0, batch.shape[0], batch_size):
      chunk = batch[start:start + batch_size]
      n = chunk.shape[0]
      padded = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
      out = _inception_forward(weights.variables, padded)
      yield {k: np.asarray(v[:n], np.float64) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class InceptionFeatures:
  pool_3: np.ndarray  # [N, 2048]
  logits: np.ndarray  # [N, 1008]


def features_from_images(images: np.ndarray | Iterable[np.ndarray], weights: InceptionWeights,
                         batch_size: int = 50) -> InceptionFeatures:
  """Inception pool_3 features and logits for NHWC images (uint8 or float in [0, 1])."""
  outs = list(_inception_batches(images, weights, batch_size))
  if not outs:
    raise ValueError("No images given.")
  return InceptionFeatures(pool_3=np.concatenate([o["pool_3"] for o in outs]),
                           logits=np.concatenate([o["logits"] for o in outs]))


def stats_provenance(weights: InceptionWeights) -> dict:
  return dict(feature_space=FEATURE_SPACE, resize_mode=inception.RESIZE_MODE, weights_sha256=weights.sha256)


def _dataset_stats(images, weights: InceptionWeights, batch_size: int,
                   keep_pool3: bool) -> tuple[fid.FeatureStats, np.ndarray | None]:
  accumulator = fid.StreamingStats()
  kept = []
  for out in _inception_batches(images, weights, batch_size):
    accumulator.update(out["pool_3"])
    if keep_pool3:
      kept.append(out["pool_3"].astype(np.float32))
  stats = accumulator.finalize(**stats_provenance(weights))
  return stats, (np.concatenate(kept) if keep_pool3 else None)


def compute_dataset_stats(images: np.ndarray | Iterable[np.ndarray], weights: InceptionWeights,
                          batch_size: int = 50) -> fid.FeatureStats:
  """FID reference statistics (mu, sigma, num_images) of a dataset, streamed batch by batch."""
  return _dataset_stats(images, weights, batch_size, keep_pool3=False)[0]


def compute_dataset_stats_and_pool3(images: np.ndarray | Iterable[np.ndarray], weights: InceptionWeights,
                                    batch_size: int = 50) -> tuple[fid.FeatureStats, np.ndarray]:
  """`compute_dataset_stats` (identical numbers) plus the pool_3 features themselves, float32 [N, 2048].

  KID and precision/recall compare feature sets, not Gaussian fits, so they need these; 8 KiB per image.
  """
  return _dataset_stats(images, weights, batch_size, keep_pool3=True)
