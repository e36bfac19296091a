"""Analytic distributions: densities, sampling and the exact diffused score."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

ALL_SDES = [
    pytest.param(sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), id="ve"),
    pytest.param(sde_lib.VPSDE(), id="vp"),
    pytest.param(sde_lib.SubVPSDE(), id="subvp"),
]


def _mixture_3d():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 3, 3))
  covs = np.einsum("kij,klj->kil", a, a) + 0.3 * np.eye(3)
  return toy.GaussianMixture(weights=jnp.array([0.35, 0.65]),
                             means=jnp.array([[1.0, -2.0, 0.5], [-1.5, 1.0, 2.0]]),
                             covs=jnp.asarray(covs))


def test_mixture_log_prob_matches_scipy(x64):
  mix = _mixture_3d()
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 3)) * 2
  expected = np.log(sum(float(w) * stats.multivariate_normal(np.asarray(m), np.asarray(c)).pdf(x)
                        for w, m, c in zip(mix.weights, mix.means, mix.covs)))
  np.testing.assert_allclose(mix.log_prob(x), expected, rtol=1e-10)


def test_mixture_sampling_moments(x64):
  mix = _mixture_3d()
  n = 200_000
  x = np.asarray(mix.sample(jax.random.PRNGKey(1), n))
  cov = np.asarray(mix.cov)
  se_mean = np.sqrt(np.diag(cov) / n)
  np.testing.assert_array_less(np.abs(x.mean(0) - np.asarray(mix.mean)), 5 * se_mean)
  # Sample covariance entries have SE <= sqrt((C_ii C_jj + C_ij^2) / n) for near-Gaussian data;
  # a mixture has heavier tails, so allow twice that.
  se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 10 * se_cov)


@pytest.mark.slow
@pytest.mark.parametrize("sde", ALL_SDES)
def test_exact_score_is_gradient_of_marginal_log_density(sde, x64):
  mix = _mixture_3d()
  x = jax.random.normal(jax.random.PRNGKey(2), (9, 3)) * 3
  t = jnp.linspace(1e-3, 1.0, 9)
  autodiff = jax.vmap(jax.grad(lambda xi, ti: mix.marginal_log_prob(sde, xi[None], ti[None])[0]))(x, t)
  np.testing.assert_allclose(mix.marginal_score(sde, x, t), autodiff, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("sde", ALL_SDES)
def test_marginal_matches_diffused_samples(sde, x64):
  """p_t of the mixture has the moments of x_t = m x_0 + std z with x_0 from the mixture."""
  mix = _mixture_3d()
  n, t = 200_000, 0.4
  k0, kz = jax.random.split(jax.random.PRNGKey(3))
  x0 = mix.sample(k0, n)
  mean, std = sde.marginal_prob(x0, jnp.full((n,), t))
  xt = np.asarray(mean + std[:, None] * jax.random.normal(kz, x0.shape))
  m, s = (float(v[0]) for v in sde.marginal_params(jnp.array([t])))
  marg_cov = m**2 * np.asarray(mix.cov) + s**2 * np.eye(3)
  se_mean = np.sqrt(np.diag(marg_cov) / n)
  np.testing.assert_array_less(np.abs(xt.mean(0) - m * np.asarray(mix.mean)), 5 * se_mean)
  se_cov = np.sqrt((np.outer(np.diag(marg_cov), np.diag(marg_cov)) + marg_cov**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(xt.T) - marg_cov), 10 * se_cov)
  # And the marginal density is normalised: importance-sampled integral from a broad Gaussian.
  proposal = stats.multivariate_normal(m * np.asarray(mix.mean), 4 * marg_cov)
  y = proposal.rvs(size=100_000, random_state=0)
  w = np.exp(np.asarray(mix.marginal_log_prob(sde, jnp.asarray(y), jnp.full((len(y),), t)))
             - proposal.logpdf(y))
  assert abs(w.mean() - 1) < 5 * w.std() / np.sqrt(len(y))


@pytest.mark.slow
def test_shapes_have_samples_and_densities():
  key = jax.random.PRNGKey(0)
  for name in sorted(toy.SHAPES):
    dist = toy.get_shape(name)
    x = dist.sample(key, 512)
    assert x.shape == (512, 2)
    assert np.all(np.isfinite(dist.log_prob(x))), name
  board = toy.get_shape("checkerboard")
  # Uniform on the dark half of [-4, 4]^2 (area 32), zero on the light squares.
  np.testing.assert_allclose(board.log_prob(jnp.array([[0.5, 0.5], [-3.0, -3.0]])), -np.log(32.0))
  assert np.all(np.isneginf(board.log_prob(jnp.array([[0.5, -0.5], [5.0, 0.0]]))))
  with pytest.raises(ValueError, match="valid choices"):
    toy.get_shape("moons")
