"""k-NN precision and recall (Kynkäänniemi et al., 2019) on point clouds with known overlaps."""
import numpy as np
import pytest

from score_sde.metrics import precision_recall as pr


def _brute_force(real, fake, k):
  def radii(points):
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself
  def coverage(centers, r, queries):
    d = np.linalg.norm(queries[:, None] - centers[None], axis=-1)
    return np.mean(np.any(d <= r[None], axis=1))
  return coverage(real, radii(real), fake), coverage(fake, radii(fake), real)


def test_fake_equal_to_one_of_two_real_clusters():
  # Real: clusters A (60 points) and B (40 points) far apart; fake: exactly the points of A.
  # Every fake point is a real point -> precision 1; only A's real points are covered -> recall 0.6.
  rng = np.random.default_rng(0)
  cluster_a = rng.normal(size=(60, 4))
  cluster_b = rng.normal(size=(40, 4)) + 100.0
  result = pr.precision_recall(np.concatenate([cluster_a, cluster_b]), cluster_a, k=3)
  assert (result.precision, result.recall) == (1.0, 0.6)


def test_disjoint_and_identical_clouds():
  rng = np.random.default_rng(1)
  real = rng.normal(size=(50, 3))
  disjoint = pr.precision_recall(real, real + 50.0)
  assert (disjoint.precision, disjoint.recall) == (0.0, 0.0)
  same = pr.precision_recall(real, real.copy())
  assert (same.precision, same.recall) == (1.0, 1.0)


def test_matches_brute_force_on_overlapping_gaussians():
  rng = np.random.default_rng(2)
  real = rng.normal(size=(120, 5))
  fake = rng.normal(0.8, 0.6, size=(90, 5))  # narrower and shifted: high-ish precision, low recall
  result = pr.precision_recall(real, fake, k=3)
  precision, recall = _brute_force(real, fake, 3)
  assert (result.precision, result.recall) == pytest.approx((precision, recall), abs=1e-12)
  assert 0.0 < result.recall < result.precision < 1.0


def test_knn_radii_batching_is_exact():
  rng = np.random.default_rng(3)
  points = rng.normal(size=(37, 2))
  np.testing.assert_allclose(pr.knn_radii(points, 2, batch_size=5), pr.knn_radii(points, 2, batch_size=100))
  with pytest.raises(ValueError, match="k must be"):
    pr.knn_radii(points, 37)
