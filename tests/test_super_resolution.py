"""Super-resolution against its closed form (issue: cascaded super-resolution).

For Gaussian data x ~ N(μ, Σ) (a 4×4 gray image, D = 16) and 2×2 average pooling A (M = 4), the
law of x given the low-resolution image A x = y is Gaussian, N(μ_c, Σ_c) with Σ_c of rank D − M
(`toy.linear_gaussian_conditional`). Diffused by any SDE it is N(m μ_c, m² Σ_c + std² I), whose
score, a score function that takes the low-resolution input, must drive the PC and probability-flow
ODE samplers to N(μ_c, Σ_c), and its samples must reproduce y when pooled.

Tolerances (as tests/test_controllable.py): means within 5 standard errors + 0.01, covariances
within (5 sqrt(2/n) + 0.04) sd_i sd_j; the allowances cover the O(1/N) discretisation at N = 500
(PC) and the solver tolerance 1e-5 (ODE). The pooled samples match y to 0.01: the conditional law
puts no mass off A x = y, and the samplers end with the denoising step at t = eps.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy
from score_sde.samplers import ode, pc

SIZE, FACTOR, N_SAMPLES = 4, 2, 3000
SDES = {
    "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=500),
    "subvp": lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=500),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=500),
}


def _prior():
  """A smooth image prior: squared-exponential covariance over pixel positions plus a nugget."""
  rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
  pos = np.stack([rows.ravel(), cols.ravel()], 1).astype(np.float64)
  dist2 = np.sum((pos[:, None] - pos[None]) ** 2, -1)
  cov = 0.5 * np.exp(-dist2 / 4.0) + 0.05 * np.eye(SIZE * SIZE)
  mean = np.linspace(-0.3, 0.3, SIZE * SIZE)
  return mean, cov


def conditional_score_fn(sde, mean_c, cov_c):
  """The exact score of p_t(x | y) = N(m μ_c, m² Σ_c + std² I) through Σ_c = U diag(λ) Uᵀ, so that
  the singular Σ_c needs no Cholesky factor; x [B, D], t [B]."""
  lam, u = np.linalg.eigh(cov_c)
  lam, u, mean_c = (jnp.asarray(v) for v in (np.clip(lam, 0.0, None), u, mean_c))

  def score_fn(x, t):
    m, std = sde.marginal_params(t)
    inv = 1.0 / (m[:, None] ** 2 * lam + std[:, None] ** 2)  # [B, D]
    return -(((x - m[:, None] * mean_c) @ u) * inv) @ u.T

  return score_fn


def test_average_pool_matrix_pools():
  a = toy.average_pool_matrix(4, 4, 2)
  image = np.arange(16.0).reshape(4, 4)
  np.testing.assert_allclose(a @ image.ravel(), image.reshape(2, 2, 2, 2).mean((1, 3)).ravel())


def test_linear_gaussian_conditional_is_the_conditional_of_the_joint():
  """Against the block formula for (x, A x) jointly Gaussian, and by construction A μ_c = y,
  A Σ_c = 0."""
  mean, cov = _prior()
  a = toy.average_pool_matrix(SIZE, SIZE, FACTOR)
  y = np.array([0.4, -0.2, 0.1, 0.7])
  mean_c, cov_c = toy.linear_gaussian_conditional(mean, cov, a, y)
  np.testing.assert_allclose(a @ mean_c, y, atol=1e-12)
  np.testing.assert_allclose(a @ cov_c, 0.0, atol=1e-12)
  assert np.linalg.matrix_rank(cov_c, tol=1e-9) == SIZE * SIZE - 4
  # Joint of (x, y = A x): condition by the Schur complement on the y block.
  joint_cov = np.block([[cov, cov @ a.T], [a @ cov, a @ cov @ a.T]])
  d = SIZE * SIZE
  gain = joint_cov[:d, d:] @ np.linalg.inv(joint_cov[d:, d:])
  np.testing.assert_allclose(mean_c, mean + gain @ (y - a @ mean), atol=1e-12)
  np.testing.assert_allclose(cov_c, cov - gain @ joint_cov[d:, :d], atol=1e-12)


def _check(samples, mean_c, cov_c, a, y):
  n = samples.shape[0]
  sd = np.sqrt(np.diag(cov_c))
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean_c), 5 * sd / np.sqrt(n) + 0.01)
  tol = (5 * np.sqrt(2.0 / n) + 0.04) * np.outer(sd, sd)
  np.testing.assert_array_less(np.abs(np.cov(samples.T) - cov_c), tol)
  np.testing.assert_array_less(np.abs(samples @ a.T - y).mean(0), 0.01)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_conditional_score_drives_pc_to_the_conditional_law(sde_name, x64):
  _run(sde_name, "pc")


@pytest.mark.slow  # 6-9 s each: the adaptive solve in float64
@pytest.mark.parametrize("sde_name", list(SDES))
def test_conditional_score_drives_the_ode_to_the_conditional_law(sde_name, x64):
  _run(sde_name, "ode")


def _run(sde_name, sampler):
  sde = SDES[sde_name]()
  mean, cov = _prior()
  a = toy.average_pool_matrix(SIZE, SIZE, FACTOR)
  y = np.array([0.4, -0.2, 0.1, 0.7])
  mean_c, cov_c = toy.linear_gaussian_conditional(mean, cov, a, y)
  score_fn = conditional_score_fn(sde, mean_c, cov_c)
  shape = (N_SAMPLES, SIZE * SIZE)
  key = jax.random.PRNGKey(0)
  if sampler == "pc":
    x, _ = pc.sample_pc(key, score_fn, sde, shape, predictor="reverse_diffusion",
                        corrector="none", eps=1e-3)
  else:
    x, _ = ode.sample_ode(key, score_fn, sde, shape, rtol=1e-5, atol=1e-5, eps=1e-3)
  _check(np.asarray(x, np.float64), mean_c, cov_c, a, y)
