"""Fréchet distance between Gaussian fits of features (FID: Heusel et al., 2017, Eq. 6) and statistics files.

d²((μ1, Σ1), (μ2, Σ2)) = ‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}).

The trace term is computed from symmetric eigendecompositions: Σ1^{1/2} is the PSD square root, and
Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}) is the sum of square roots of that PSD matrix's eigenvalues (which equal
those of Σ1 Σ2). Unlike `scipy.linalg.sqrtm(Σ1 Σ2)` this never returns complex parts and needs no
eps offset for singular covariances (e.g. fewer samples than feature dimensions).
"""
from __future__ import annotations

import dataclasses

import numpy as np


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  eigval, eigvec = np.linalg.eigh(sigma)
  return (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}) for symmetric PSD Σ1, Σ2, in float64."""
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  eigval = np.linalg.eigvalsh(0.5 * (middle + middle.T))
  return float(np.sum(np.sqrt(np.clip(eigval, 0.0, None))))


def _check_gaussian(mu, sigma, name):
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
    raise ValueError(f"{name}: need mu [D] and sigma [D, D]; got {mu.shape} and {sigma.shape}.")
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise ValueError(f"{name}: mu/sigma contain NaN or inf (did the features overflow?).")
  return mu, 0.5 * (sigma + sigma.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, sigma1 = _check_gaussian(mu1, sigma1, "first Gaussian")
  mu2, sigma2 = _check_gaussian(mu2, sigma2, "second Gaussian")
  if mu1.shape != mu2.shape:
    raise ValueError(f"Feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}; the statistics "
                     "come from different feature extractors.")
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
  return float(max(value, 0.0))  # rounding can push an exact 0 to -1e-12


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Gaussian fit of a feature set (mean, unbiased covariance) plus how the features were made."""
  mu: np.ndarray  # [D]
  sigma: np.ndarray  # [D, D]
  num_images: int
  feature_space: str = ""
  resize_mode: str = ""
  weights_sha256: str = ""

  def save(self, path: str) -> None:
    """Writes an .npz with mu, sigma, num_images and the provenance strings."""
    with open(path, "wb") as f:
      np.savez(f, mu=self.mu, sigma=self.sigma, num_images=np.int64(self.num_images),
               feature_space=np.str_(self.feature_space), resize_mode=np.str_(self.resize_mode),
               weights_sha256=np.str_(self.weights_sha256))

  @classmethod
  def load(cls, path: str) -> "FeatureStats":
    with np.load(path) as data:
      missing = {"mu", "sigma"} - set(data.files)
      if missing:
        raise ValueError(f"{path} is not a statistics file: it lacks {sorted(missing)} (has {data.files}).")
      text = lambda k: str(data[k]) if k in data.files else ""
      return cls(mu=data["mu"].astype(np.float64), sigma=data["sigma"].astype(np.float64),
                 num_images=int(data["num_images"]) if "num_images" in data.files else 0,
                 feature_space=text("feature_space"), resize_mode=text("resize_mode"),
                 weights_sha256=text("weights_sha256"))


def stats_from_features(features, **provenance) -> FeatureStats:
  """Mean and unbiased covariance (ddof = 1, as `np.cov`) of features [N, D]."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"Need features of shape [N >= 2, D]; got {features.shape}.")
  return FeatureStats(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False),
                      num_images=features.shape[0], **provenance)


class StreamingStats:
  """Accumulates mean and covariance batch by batch (for datasets too large to hold all features).

  Sums are taken about a fixed shift (the first batch's mean) in float64, which keeps the
  E[xxᵀ] − E[x]E[x]ᵀ subtraction well conditioned.
  """

  def __init__(self):
    self._shift = None
    self._count = 0
    self._sum = None
    self._outer = None

  def update(self, features) -> None:
    features = np.asarray(features, np.float64)  # [B, D]
    if self._shift is None:
      self._shift = features.mean(axis=0)
      self._sum = np.zeros_like(self._shift)
      self._outer = np.zeros((self._shift.size, self._shift.size))
    centered = features - self._shift
    self._count += features.shape[0]
    self._sum += centered.sum(axis=0)
    self._outer += centered.T @ centered

  def finalize(self, **provenance) -> FeatureStats:
    if self._count < 2:
      raise ValueError(f"Need at least 2 feature vectors for a covariance; got {self._count}.")
    mean_c = self._sum / self._count
    sigma = (self._outer - self._count * np.outer(mean_c, mean_c)) / (self._count - 1)
    return FeatureStats(mu=self._shift + mean_c, sigma=sigma, num_images=self._count, **provenance)


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
  """Fréchet distance between two statistics, refusing pairs computed in different feature spaces."""
  for field in ("feature_space", "weights_sha256", "resize_mode"):
    a, b = getattr(stats1, field), getattr(stats2, field)
    if a and b and a != b:
      raise ValueError(f"Statistics disagree on {field}: {a!r} vs {b!r}; their distance is meaningless.")
  return frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma)
