"""KID: the unbiased cubic-kernel MMD² against brute force and against its analytic value for Gaussians."""
import numpy as np
import pytest

from score_sde.metrics import kid

D = 3
MU1 = np.array([0.5, -0.2, 0.1])
MU2 = np.array([-0.3, 0.4, 0.8])
SIGMA1 = np.array([[0.6, 0.2, 0.0], [0.2, 0.5, -0.1], [0.0, -0.1, 0.4]])
SIGMA2 = np.array([[0.3, -0.05, 0.1], [-0.05, 0.7, 0.0], [0.1, 0.0, 0.5]])


def expected_cubic_kernel(mu1, s1, mu2, s2):
  """E (xᵀy/d + 1)³ for independent x ~ N(mu1, s1), y ~ N(mu2, s2).

  With s = xᵀy and, given y, s ~ N(a, b) (a = mu1ᵀy, b = yᵀ s1 y):
    E s = m,  E s² = m² + v + E b,  E s³ = m³ + 3 m v + 3 (m E b + 2 mu1ᵀ s2 s1 mu2),
  where m = mu1ᵀmu2, v = mu1ᵀ s2 mu1, E b = mu2ᵀ s1 mu2 + tr(s1 s2).
  """
  d = mu1.size
  m, v = mu1 @ mu2, mu1 @ s2 @ mu1
  e_b = mu2 @ s1 @ mu2 + np.trace(s1 @ s2)
  e_s, e_s2 = m, m * m + v + e_b
  e_s3 = m**3 + 3 * m * v + 3 * (m * e_b + 2 * mu1 @ s2 @ s1 @ mu2)
  return e_s3 / d**3 + 3 * e_s2 / d**2 + 3 * e_s / d + 1


def analytic_mmd2(mu1, s1, mu2, s2):
  return (expected_cubic_kernel(mu1, s1, mu1, s1) + expected_cubic_kernel(mu2, s2, mu2, s2)
          - 2 * expected_cubic_kernel(mu1, s1, mu2, s2))


def test_mmd2_unbiased_matches_brute_force_double_sum():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(6, 4)), rng.normal(0.5, 1.0, size=(6, 4))
  k = lambda a, b: (a @ b / 4 + 1) ** 3
  m = 6
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
  np.testing.assert_allclose(kid.mmd2_unbiased(x, y), xx + yy - 2 * xy, rtol=1e-12)


def _replicated_kid(mu1, s1, mu2, s2, replications=400, n=50, seed=0):
  # Independent replications give an honest standard error of the mean estimate.
  rng = np.random.default_rng(seed)
  values = np.array([
      kid.kernel_inception_distance(rng.multivariate_normal(mu1, s1, n), rng.multivariate_normal(mu2, s2, n),
                                    num_subsets=1, subset_size=n).mean
      for _ in range(replications)])
  return values.mean(), values.std(ddof=1) / np.sqrt(replications)


def test_unbiased_on_identical_distributions():
  mean, se = _replicated_kid(MU1, SIGMA1, MU1, SIGMA1)
  assert abs(mean) < 4 * se, (mean, se)
  # The biased V-statistic (diagonal terms kept) is clearly positive here, so the check has teeth.
  rng = np.random.default_rng(1)
  x, y = rng.multivariate_normal(MU1, SIGMA1, 50), rng.multivariate_normal(MU1, SIGMA1, 50)
  biased = (kid.polynomial_kernel(x, x).mean() + kid.polynomial_kernel(y, y).mean()
            - 2 * kid.polynomial_kernel(x, y).mean())
  assert biased > 10 * se


def test_unbiased_on_shifted_distributions_matches_analytic_mmd2():
  target = analytic_mmd2(MU1, SIGMA1, MU2, SIGMA2)
  assert target > 0.05  # the two Gaussians are well apart in this kernel's feature space
  mean, se = _replicated_kid(MU1, SIGMA1, MU2, SIGMA2, seed=2)
  assert abs(mean - target) < 4 * se, (mean, target, se)
  assert se < 0.1 * target


def test_subsets_and_standard_error():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(40, 5)), rng.normal(0.3, 1.0, size=(30, 5))
  # Subsets as large as the smaller set: the y-subset is all of y and only x's subset varies.
  full = kid.kernel_inception_distance(x[:30], y, num_subsets=3, subset_size=100)
  np.testing.assert_allclose([full.mean, full.std], [kid.mmd2_unbiased(x[:30], y), 0.0], atol=1e-12)
  assert full.subset_size == 30
  est = kid.kernel_inception_distance(x, y, num_subsets=20, subset_size=10, seed=7)
  again = kid.kernel_inception_distance(x, y, num_subsets=20, subset_size=10, seed=7)
  assert est == again
  np.testing.assert_allclose(est.std_error, est.std / np.sqrt(20), rtol=1e-12)
  # Mean and sample std (ddof 1) of the per-subset MMD²_u, subsets drawn x then y from the seed.
  rng = np.random.default_rng(7)
  per_subset = [kid.mmd2_unbiased(x[rng.choice(40, 10, replace=False)], y[rng.choice(30, 10, replace=False)])
                for _ in range(20)]
  np.testing.assert_allclose([est.mean, est.std], [np.mean(per_subset), np.std(per_subset, ddof=1)],
                             rtol=1e-12)


def test_bad_inputs_are_rejected():
  with pytest.raises(ValueError, match="same d"):
    kid.kernel_inception_distance(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="at least 2"):
    kid.kernel_inception_distance(np.zeros((1, 2)), np.zeros((4, 2)))
