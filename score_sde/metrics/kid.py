"""Kernel Inception Distance (Bińkowski et al., 2018, "Demystifying MMD GANs", Sec. 4).

KID is the unbiased estimator of the squared MMD with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³:

  MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1)) − 2 Σ_{i,j} k(x_i, y_j) / m²,

averaged over random subsets of size m. Being unbiased, it is ≈ 0 (and can be negative) for samples
from the same distribution.
"""
from __future__ import annotations

import dataclasses

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
  """k(x, y) = (xᵀy / d + coef0)^degree for rows of x [N, d] and y [M, d] -> [N, M]."""
  return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD² with the cubic kernel between equally sized samples x, y [m, d]."""
  m = x.shape[0]
  k_xx = polynomial_kernel(x, x)
  k_yy = polynomial_kernel(y, y)
  k_xy = polynomial_kernel(x, y)
  off_diag = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
  return float(off_diag(k_xx) + off_diag(k_yy) - 2.0 * k_xy.mean())


@dataclasses.dataclass(frozen=True)
class KIDEstimate:
  mean: float  # mean of the subset estimates
  std: float  # spread of the subset estimates (ddof = 1)
  std_error: float  # std / sqrt(num_subsets)
  num_subsets: int
  subset_size: int


def kernel_inception_distance(features_x, features_y, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> KIDEstimate:
  """KID between feature sets [N, d] and [M, d]: MMD²_u over `num_subsets` random subsets.

  Each subset draws `subset_size` rows without replacement from each set (capped at the smaller set).
  """
  x = np.asarray(features_x, np.float64)
  y = np.asarray(features_y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"Need feature arrays [N, d] and [M, d] with the same d; got {x.shape} and {y.shape}.")
  m = min(subset_size, x.shape[0], y.shape[0])
  if m < 2:
    raise ValueError(f"KID needs at least 2 samples per set; got {x.shape[0]} and {y.shape[0]}.")
  if num_subsets < 1:
    raise ValueError(f"num_subsets must be >= 1; got {num_subsets}.")
  rng = np.random.default_rng(seed)
  estimates = np.array([
      mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
      for _ in range(num_subsets)])
  std = float(estimates.std(ddof=1)) if num_subsets > 1 else float("nan")
  return KIDEstimate(mean=float(estimates.mean()), std=std, std_error=std / np.sqrt(num_subsets),
                     num_subsets=num_subsets, subset_size=m)
