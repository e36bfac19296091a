"""Improved precision and recall (Kynkäänniemi et al., 2019, Sec. 2).

Each set's manifold is the union of balls around its points with radius the distance to the point's
k-th nearest neighbour within the set (k = 3 in the paper). Precision is the fraction of generated
points inside the real manifold; recall is the fraction of real points inside the generated manifold.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  d2 = np.sum(a**2, axis=1)[:, None] - 2.0 * a @ b.T + np.sum(b**2, axis=1)[None, :]
  return np.maximum(d2, 0.0)


def knn_radii(points: np.ndarray, k: int, batch_size: int = 1024) -> np.ndarray:
  """Squared distance from each point to its k-th nearest other point in the same set: [N]."""
  if not 1 <= k < points.shape[0]:
    raise ValueError(f"k must be in [1, N-1={points.shape[0] - 1}]; got {k}.")
  radii = []
  for start in range(0, points.shape[0], batch_size):
    d2 = _squared_distances(points[start:start + batch_size], points)
    # index k: the 0-th smallest is the point itself (distance 0).
    radii.append(np.partition(d2, k, axis=1)[:, k])
  return np.concatenate(radii)


def manifold_coverage(manifold_points: np.ndarray, radii2: np.ndarray, queries: np.ndarray,
                      batch_size: int = 1024) -> float:
  """Fraction of queries within some ball (center manifold_points[i], squared radius radii2[i])."""
  inside = []
  for start in range(0, queries.shape[0], batch_size):
    d2 = _squared_distances(queries[start:start + batch_size], manifold_points)
    inside.append(np.any(d2 <= radii2[None, :], axis=1))
  return float(np.mean(np.concatenate(inside)))


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
  precision: float
  recall: float
  k: int


def precision_recall(real_features, fake_features, k: int = 3) -> PrecisionRecall:
  """k-NN precision and recall of fake [M, d] against real [N, d] features."""
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"Need feature arrays [N, d] and [M, d] with the same d; got {real.shape} and {fake.shape}.")
  precision = manifold_coverage(real, knn_radii(real, k), fake)
  recall = manifold_coverage(fake, knn_radii(fake, k), real)
  return PrecisionRecall(precision=precision, recall=recall, k=k)
