"""Fréchet distance against closed forms, and statistics files."""
import numpy as np
import pytest
import scipy.linalg

from score_sde.metrics import fid


def _random_rotation(rng, d):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


def test_commuting_covariances_match_closed_form():
  # Σ1 = U diag(a) Uᵀ, Σ2 = U diag(b) Uᵀ commute, so Tr sqrt(Σ1 Σ2) = Σ_i sqrt(a_i b_i).
  rng = np.random.default_rng(0)
  d = 16
  u = _random_rotation(rng, d)
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
  got = fid.frechet_distance(mu1, (u * a) @ u.T, mu2, (u * b) @ u.T)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_non_commuting_2x2_closed_form():
  # For 2x2 PSD M = Σ1 Σ2 (eigenvalues l1, l2 >= 0): Tr sqrt(M) = sqrt(l1) + sqrt(l2) = sqrt(tr M + 2 sqrt(det M)).
  s1 = np.array([[2.0, 0.7], [0.7, 0.5]])
  s2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
  mu1, mu2 = np.array([0.3, -1.0]), np.array([1.0, 2.0])
  tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-12)
  np.testing.assert_allclose(fid.frechet_distance(mu2, s2, mu1, s1), expected, rtol=1e-12)


def test_rank_one_covariance_2x2_closed_form():
  # det Σ1 = 0: Tr sqrt(Σ1 Σ2) = sqrt(tr(Σ1 Σ2)) = sqrt(vᵀ Σ2 v) for Σ1 = v vᵀ.
  v = np.array([1.5, -0.5])
  s1 = np.outer(v, v)
  s2 = np.array([[1.0, 0.3], [0.3, 2.0]])
  expected = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(v @ s2 @ v)
  # The zero eigenvalue comes out as ~1e-16 in float64, and its square root (~1e-8) enters the trace.
  np.testing.assert_allclose(fid.frechet_distance(np.zeros(2), s1, np.zeros(2), s2), expected, atol=1e-7)


def test_near_singular_covariances_match_closed_form():
  # Half the eigenvalues are 0 or 1e-14 (as with fewer samples than dimensions); commuting closed form.
  rng = np.random.default_rng(1)
  d = 64
  u = _random_rotation(rng, d)
  a = np.concatenate([rng.uniform(0.5, 2.0, d // 2), np.zeros(d // 4), np.full(d // 4, 1e-14)])
  b = np.concatenate([rng.uniform(0.5, 2.0, d // 4), np.zeros(d // 4), rng.uniform(0.5, 2.0, d // 2)])
  expected = np.sum(a + b - 2 * np.sqrt(a * b))
  got = fid.frechet_distance(np.zeros(d), (u * a) @ u.T, np.zeros(d), (u * b) @ u.T)
  # float64 eigendecomposition: eigenvalues carry ~1e-15 * ||Σ|| error, whose sqrt is ~3e-8 per zero mode.
  np.testing.assert_allclose(got, expected, atol=d * 1e-7)


def test_rank_deficient_sample_covariance_agrees_with_sqrtm_reference():
  # 20 samples in 48 dimensions: rank-19 covariances. Independent reference: the scipy.linalg.sqrtm
  # route with pytorch-fid's eps-offset fallback.
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(20, 48)), rng.normal(1.0, 2.0, size=(20, 48))
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  mu1, mu2 = x.mean(0), y.mean(0)
  offset = 1e-6 * np.eye(48)
  covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset)).real
  reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), reference, rtol=1e-5)


def test_identical_gaussians_have_zero_distance():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(100, 32))
  stats = fid.stats_from_features(x)
  assert fid.frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma) == pytest.approx(0.0, abs=1e-8)


def test_stats_and_streaming_stats_match_numpy():
  rng = np.random.default_rng(4)
  x = rng.normal(5.0, 0.1, size=(103, 8))  # large mean relative to spread
  stats = fid.stats_from_features(x)
  np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-13)
  np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-10)
  stream = fid.StreamingStats()
  for start in range(0, 103, 10):
    stream.update(x[start:start + 10])
  streamed = stream.finalize()
  assert streamed.num_images == 103
  np.testing.assert_allclose(streamed.mu, stats.mu, rtol=1e-13)
  np.testing.assert_allclose(streamed.sigma, stats.sigma, rtol=1e-9, atol=1e-16)


def test_stats_file_roundtrip_and_provenance_checks(tmp_path):
  rng = np.random.default_rng(5)
  stats = fid.stats_from_features(rng.normal(size=(10, 3)), feature_space="space_a", resize_mode="r",
                                  weights_sha256="abc")
  path = str(tmp_path / "stats.npz")
  stats.save(path)
  loaded = fid.FeatureStats.load(path)
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  assert (loaded.num_images, loaded.feature_space, loaded.resize_mode, loaded.weights_sha256) == (
      10, "space_a", "r", "abc")
  assert fid.fid_from_stats(loaded, stats) == pytest.approx(0.0, abs=1e-10)
  other = fid.FeatureStats(stats.mu, stats.sigma, 10, feature_space="space_b")
  with pytest.raises(ValueError, match="feature_space"):
    fid.fid_from_stats(stats, other)
  np.savez(str(tmp_path / "bad.npz"), pool_3=np.zeros((2, 3)))
  with pytest.raises(ValueError, match="lacks"):
    fid.FeatureStats.load(str(tmp_path / "bad.npz"))


def test_bad_inputs_are_rejected():
  with pytest.raises(ValueError, match="dimensions differ"):
    fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="NaN"):
    fid.frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="N >= 2"):
    fid.stats_from_features(np.zeros((1, 4)))
