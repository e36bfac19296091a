"""EDM: σ(t) conversions, preconditioning, loss, ρ-schedule and the Heun sampler, on exact scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.diffusion import losses, parametrization
from score_sde.samplers import common, edm
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

ALL_SDES = [
    pytest.param(sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0), id="ve"),
    pytest.param(sde_lib.VPSDE(), id="vp"),
    pytest.param(sde_lib.SubVPSDE(), id="subvp"),
]
MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.2], [0.2, 0.3]])


def _gaussian():
  return toy.gaussian(jnp.asarray(MU), jnp.asarray(SIGMA))


def _exact_flow(sde, x_T, t):
  """Closed-form probability-flow ODE map for Gaussian data: x_t = m μ + C_t^½ C_T^-½ (x_T - m_T μ)."""
  evals, evecs = np.linalg.eigh(SIGMA)
  m_T, s_T = (float(v) for v in sde.marginal_params(jnp.asarray(sde.T)))
  m, s = (float(v) for v in sde.marginal_params(jnp.asarray(t)))
  a = evecs @ np.diag(np.sqrt((m**2 * evals + s**2) / (m_T**2 * evals + s_T**2))) @ evecs.T
  return m * MU + (np.asarray(x_T) - m_T * MU) @ a.T


@pytest.mark.parametrize("sde", ALL_SDES)
def test_t_of_sigma_inverts_sigma_of_t(sde, x64):
  t = jnp.linspace(1e-3, 1.0, 11)
  np.testing.assert_allclose(parametrization.t_of_sigma(sde, parametrization.sigma_of_t(sde, t)), t, rtol=1e-12, atol=1e-14)


def test_t_of_sigma_matches_closed_form_vp(x64):
  """VP: σ^2 = 1/m^2 - 1, so log m = -log(1 + σ^2)/2 = -t^2 (β1-β0)/4 - t β0/2, a quadratic in t."""
  sde = sde_lib.VPSDE()
  sigma = jnp.array([0.01, 0.3, 2.0, 150.0])
  c = 0.5 * np.log1p(np.asarray(sigma) ** 2)
  a, b = (sde.beta_max - sde.beta_min) / 4, sde.beta_min / 2
  np.testing.assert_allclose(parametrization.t_of_sigma(sde, sigma), 2 * c / (b + np.sqrt(b**2 + 4 * a * c)),
                             rtol=1e-12)


@pytest.mark.parametrize("sde", ALL_SDES)
def test_conversions_round_trip_exactly(sde, x64):
  """score -> denoiser -> score and the data prediction agree with Tweedie's formula."""
  gauss = _gaussian()
  score_fn = gauss.score_fn(sde)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
  t = jnp.linspace(0.05, 0.9, 5)
  m, std = sde.marginal_params(t)
  denoiser = parametrization.Denoiser(fn=parametrization.as_denoiser(score_fn, sde))
  np.testing.assert_allclose(parametrization.as_score_fn(denoiser, sde)(x, t), score_fn(x, t), rtol=1e-9)
  tweedie = (x + std[:, None] ** 2 * score_fn(x, t)) / m[:, None]
  np.testing.assert_allclose(parametrization.data_prediction(score_fn, sde)(x, t), tweedie, rtol=1e-12)
  np.testing.assert_allclose(parametrization.data_prediction(denoiser, sde)(x, t), tweedie, rtol=1e-9)


def _exact_posterior_mean(x_sigma, sigma):
  """E[x_0 | x_0 + σ n = x] for x_0 ~ N(MU, SIGMA), independent NumPy: μ + Σ (Σ + σ^2 I)^-1 (x - μ)."""
  out = []
  for xi, si in zip(np.asarray(x_sigma), np.asarray(sigma)):
    out.append(MU + SIGMA @ np.linalg.solve(SIGMA + si**2 * np.eye(2), xi - MU))
  return np.stack(out)


@pytest.mark.parametrize("sde", ALL_SDES)
def test_preconditioned_exact_network_gives_exact_score(sde, x64):
  """F* = (D* - c_skip x) / c_out, the ideal network, wrapped by the preconditioning is the score."""
  sigma_data = 0.5

  def ideal_network(params, x_in, c_noise, train, rng):
    del params, train, rng
    sigma = jnp.exp(4.0 * c_noise)
    c_skip, c_out, c_in, _ = parametrization.preconditioning(sigma, sigma_data)
    x_sigma = x_in / c_in[:, None]
    d_exact = jnp.asarray(MU) + jnp.linalg.solve(
        jnp.asarray(SIGMA) + sigma[:, None, None] ** 2 * jnp.eye(2), (x_sigma - MU)[..., None])[..., 0] @ SIGMA.T
    return (d_exact - c_skip[:, None] * x_sigma) / c_out[:, None]

  denoiser = parametrization.get_denoiser(ideal_network, None, sigma_data=sigma_data)
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (6, 2))
  t = jnp.linspace(0.02, 1.0, 6)
  score = parametrization.as_score_fn(denoiser, sde)(x, t)
  np.testing.assert_allclose(score, _gaussian().marginal_score(sde, x, t), rtol=1e-9, atol=1e-12)
  sigma = parametrization.sigma_of_t(sde, t)
  m = sde.marginal_params(t)[0]
  np.testing.assert_allclose(denoiser(x / m[:, None], sigma),
                             _exact_posterior_mean(x / m[:, None], sigma), rtol=1e-10)


def test_edm_loss_of_exact_denoiser_is_one_per_dimension(x64):
  """For data N(0, σ_d^2 I), λ(σ) Var[x_0 | x_σ] = λ σ_d^2 σ^2 / (σ_d^2 + σ^2) = 1 at every σ."""
  sigma_data, dim, batch = 0.5, 4, 4096

  def ideal_network(params, x_in, c_noise, train, rng):
    sigma = jnp.exp(4.0 * c_noise)[:, None]
    # D* = σ_d^2/(σ_d^2+σ^2) x = c_skip x, so F* = params * 0 is ideal; params scales a deviation.
    return params * x_in * sigma

  loss_fn = losses.get_edm_loss_fn(sde_lib.VESDE(), ideal_network, train=True, sigma_data=sigma_data)
  x0 = sigma_data * jax.random.normal(jax.random.PRNGKey(2), (batch, dim))
  loss, aux = loss_fn(0.0, jax.random.PRNGKey(3), x0)
  # Each per-sample loss is a mean of `dim` squared unit normals: variance 2 / dim.
  np.testing.assert_allclose(loss, 1.0, atol=5 * np.sqrt(2 / dim / batch))
  assert aux["losses"].shape == (batch,)
  worse, _ = loss_fn(0.3, jax.random.PRNGKey(3), x0)
  assert worse > loss + 0.05


def test_karras_sigmas_endpoints_and_rho(x64):
  s = edm.karras_sigmas(10, 0.002, 80.0, rho=7.0)
  np.testing.assert_allclose([s[0], s[-1]], [80.0, 0.002], rtol=1e-12)
  np.testing.assert_allclose(np.diff(np.asarray(s) ** (1 / 7)),
                             (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 9, rtol=1e-10)
  with pytest.raises(ValueError, match="n >= 2"):
    edm.karras_sigmas(1, 0.002, 80.0)


def test_heun_sampler_is_second_order(x64):
  """Deterministic Heun (Algorithm 1) against the closed-form flow from the same x_T to the data."""
  sde = sde_lib.VPSDE()
  score_fn = _gaussian().score_fn(sde)
  key, shape = jax.random.PRNGKey(4), (16, 2)
  x_T = common.prior_sample(common.sample_keys(key, 16), sde, shape, jnp.float64)
  # eps = 1e-5 puts σ(eps) ≈ 1e-3, so the final Euler step to σ = 0 adds only O(σ^2) ≈ 1e-6.
  ref = _exact_flow(sde, x_T, 0.0)
  errors = []
  for n in (16, 32):
    x, info = edm.sample_edm(key, score_fn, sde, shape, num_steps=n, eps=1e-5)
    assert info["nfe"] == 2 * n - 1
    errors.append(np.abs(np.asarray(x) - ref).max())
  slope = np.log2(errors[0] / errors[1])
  assert 1.7 < slope < 2.6, (errors, slope)


def test_stochastic_sampler_matches_moments_and_is_batch_independent(x64):
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0)
  score_fn = _gaussian().score_fn(sde)
  kw = dict(num_steps=24, eps=1e-5, s_churn=30.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.0)
  x, info = edm.sample_edm(jax.random.PRNGKey(5), score_fn, sde, (4000, 2), **kw)
  assert info["nfe"] == 47
  x = np.asarray(x)
  n = x.shape[0]
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * np.sqrt(np.diag(SIGMA) / n) + 0.01)
  se_cov = np.sqrt((np.outer(np.diag(SIGMA), np.diag(SIGMA)) + SIGMA**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - SIGMA), 5 * se_cov + 0.02)
  # Sample b draws its noise from fold_in(key, b): a smaller batch reproduces the first rows.
  head, _ = edm.sample_edm(jax.random.PRNGKey(5), score_fn, sde, (7, 2), **kw)
  np.testing.assert_allclose(head, x[:7], rtol=1e-10)


def test_bad_input_is_rejected():
  sde = sde_lib.VPSDE()
  with pytest.raises(ValueError, match="num_steps >= 2"):
    edm.sample_edm(jax.random.PRNGKey(0), lambda x, t: -x, sde, (4, 2), num_steps=1)
  with pytest.raises(ValueError, match="shape must be"):
    edm.sample_edm(jax.random.PRNGKey(0), lambda x, t: -x, sde, (4,))
