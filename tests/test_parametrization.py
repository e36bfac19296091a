"""Conversions between score, data (x_0), noise (ε) and velocity predictions, against closed forms.

For x_0 ~ N(μ, Σ) the probability-flow ODE moves x_t along x_t = m μ + C_t^½ C_T^-½ (x_T - m_T μ),
C_t = m² Σ + std² I, so its velocity is m' μ + (d/dt C_t^½) C_t^-½ (x_t - m μ): in the eigenbasis of
Σ, (m m' λ + std std') / (m² λ + std²) per eigenvalue λ. The derivatives m', std' have closed forms
per SDE (below), independent of the ``jax.jvp`` in ``marginal_coefficients``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from score_sde.diffusion import parametrization as param
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

ALL_SDES = [
    pytest.param(sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0), id="ve"),
    pytest.param(sde_lib.VPSDE(), id="vp"),
    pytest.param(sde_lib.SubVPSDE(), id="subvp"),
]
MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.2], [0.2, 0.3]])
TIMES = np.array([1e-3, 0.05, 0.3, 0.6, 1.0])


def _closed_form_coefficients(sde, t):
  """(m, std, m', std') from the closed-form schedules of sde.py, differentiated by hand."""
  t = np.asarray(t)
  if isinstance(sde, sde_lib.VESDE):
    std = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    return np.ones_like(t), std, np.zeros_like(t), std * np.log(sde.sigma_max / sde.sigma_min)
  m = np.exp(-0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min)
  dm = -0.5 * (sde.beta_min + t * (sde.beta_max - sde.beta_min)) * m
  if isinstance(sde, sde_lib.VPSDE):
    std = np.sqrt(1 - m**2)
    return m, std, dm, -m * dm / std
  return m, 1 - m**2, dm, -2 * m * dm


def _inputs(std, batch=5, dim=3):
  """x_t [B, D] and a score at its natural scale, ε / std with ε ~ N(0, I) (std: [B, 1])."""
  kx, ks = jax.random.split(jax.random.PRNGKey(0))
  x = 2.0 * jax.random.normal(kx, (batch, dim))
  score = jax.random.normal(ks, (batch, dim)) / std
  return x, score


@pytest.mark.parametrize("sde", ALL_SDES)
def test_marginal_coefficients_match_closed_form(sde, x64):
  coefs = param.marginal_coefficients(sde, jnp.asarray(TIMES))
  for got, want in zip(coefs, _closed_form_coefficients(sde, TIMES)):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sde", ALL_SDES)
def test_conversions_round_trip(sde, x64):
  """score -> x0 -> ε -> v -> score, and each pair there and back, for any prediction."""
  m, std, dm, dstd = (c[:, None] for c in param.marginal_coefficients(sde, jnp.asarray(TIMES)))
  x, score = _inputs(std)
  x0 = param.data_from_score(x, score, m, std)
  eps = param.noise_from_data(x, x0, m, std)
  v = param.velocity_from_noise(x, eps, m, std, dm, dstd)
  back = param.score_from_noise(param.noise_from_velocity(x, v, m, std, dm, dstd), std)
  np.testing.assert_allclose(back, score, rtol=1e-10, atol=1e-12)

  np.testing.assert_allclose(param.score_from_data(x, x0, m, std), score, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(param.noise_from_score(score, std), eps, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(param.data_from_noise(x, eps, m, std), x0, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(param.score_from_noise(eps, std), score, rtol=1e-10, atol=1e-12)
  # The definition x_t = m x̂_0 + std ε̂ holds for the pair, and v̂ = m' x̂_0 + std' ε̂.
  np.testing.assert_allclose(m * x0 + std * eps, x, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(dm * x0 + dstd * eps, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", ALL_SDES)
def test_velocity_of_exact_score_is_the_closed_form_flow(sde, x64):
  """v̂ of the exact Gaussian score = d/dt of the closed-form probability-flow map = f - g² s / 2."""
  gauss = toy.gaussian(jnp.asarray(MU), jnp.asarray(SIGMA))
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(1), (len(TIMES), 2))
  t = jnp.asarray(TIMES)
  v = param.velocity_prediction(gauss.score_fn(sde), sde)(x, t)

  evals, evecs = np.linalg.eigh(SIGMA)
  expected = []
  for xi, (m, std, dm, dstd) in zip(np.asarray(x), zip(*_closed_form_coefficients(sde, TIMES))):
    rate = (m * dm * evals + std * dstd) / (m**2 * evals + std**2)
    expected.append(dm * MU + evecs @ (rate * (evecs.T @ (xi - m * MU))))
  np.testing.assert_allclose(v, np.stack(expected), rtol=1e-10, atol=1e-10)

  pf_drift, _ = sde.reverse(gauss.score_fn(sde), probability_flow=True).sde(x, t)
  np.testing.assert_allclose(v, pf_drift, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", ALL_SDES)
def test_velocity_is_the_probability_flow_drift_for_a_mixture(sde, x64):
  mixture = toy.ring(n_modes=4, radius=2.0, std=0.4)
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (len(TIMES), 2))
  t = jnp.asarray(TIMES)
  score_fn = mixture.score_fn(sde)
  pf_drift, _ = sde.reverse(score_fn, probability_flow=True).sde(x, t)
  np.testing.assert_allclose(param.velocity_prediction(score_fn, sde)(x, t), pf_drift,
                             rtol=1e-10, atol=1e-10)
  # The same model as a Denoiser (t recovered from σ by bisection) gives the same predictions.
  denoiser = param.Denoiser(fn=param.as_denoiser(score_fn, sde))
  for predict in (param.data_prediction, param.noise_prediction, param.velocity_prediction):
    np.testing.assert_allclose(predict(denoiser, sde)(x, t), predict(score_fn, sde)(x, t),
                               rtol=1e-8, atol=1e-9)
  m, std = sde.marginal_params(t)
  np.testing.assert_allclose(param.noise_prediction(score_fn, sde)(x, t),
                             -std[:, None] * score_fn(x, t), rtol=1e-10, atol=1e-10)


@struct.dataclass
class _StraightPath:
  """x_t = (1 - t) x_0 + t z: the rectified-flow path, only its marginal (m, std)."""

  def marginal_params(self, t):
    return 1.0 - t, t


def test_velocity_of_the_straight_path_is_noise_minus_data(x64):
  """Rectified flow: v = z - x_0, x_0 = x - t v (Liu et al. 2022)."""
  kx, kz = jax.random.split(jax.random.PRNGKey(3))
  x0, z = jax.random.normal(kx, (4, 3)), jax.random.normal(kz, (4, 3))
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  m, std, dm, dstd = (c[:, None] for c in param.marginal_coefficients(_StraightPath(), t))
  np.testing.assert_array_equal(dm, -1.0)
  np.testing.assert_array_equal(dstd, 1.0)
  x_t = m * x0 + std * z
  v = param.velocity_from_noise(x_t, z, m, std, dm, dstd)
  np.testing.assert_allclose(v, z - x0, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(param.noise_from_velocity(x_t, v, m, std, dm, dstd), z, atol=1e-12)
  np.testing.assert_allclose(x_t - t[:, None] * v, x0, atol=1e-12)


def test_sigma_inputs(x64):
  sde = sde_lib.VPSDE()
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  t = jnp.asarray(TIMES)
  x_sigma, sigma = param.sigma_inputs(sde, x, t)
  m, std = sde.marginal_params(t)
  np.testing.assert_allclose(x_sigma * m[:, None], x, rtol=1e-14)
  np.testing.assert_allclose(sigma, param.sigma_of_t(sde, t), rtol=1e-14)


def _network(params, x, labels, *, train=False, rng=None):
  del train, rng
  return params * x + labels[:, None]


def test_sampling_model_of_each_objective(x64):
  sde = sde_lib.VPSDE()
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (5, 3))
  t = jnp.asarray(TIMES)
  for objective in (None, "dsm", "smld", "ddpm"):
    model = param.sampling_model(objective, sde, _network, 0.5, continuous=True)
    assert not isinstance(model, param.Denoiser)
    expected = sde_lib.get_score_fn(sde, _network, 0.5, continuous=True)(x, t)
    np.testing.assert_allclose(model(x, t), expected, rtol=1e-14)

  denoiser = param.sampling_model("edm", sde, _network, 0.5, continuous=True, sigma_data=0.3)
  assert isinstance(denoiser, param.Denoiser)
  sigma = jnp.array([0.1, 1.0, 2.0, 5.0, 10.0])
  c_skip, c_out, c_in, c_noise = param.preconditioning(sigma, 0.3)
  expected = c_skip[:, None] * x + c_out[:, None] * _network(0.5, c_in[:, None] * x, c_noise)
  np.testing.assert_allclose(denoiser(x, sigma), expected, rtol=1e-14)
  with pytest.raises(ValueError, match="Unknown objective 'flow'"):
    param.sampling_model("flow", sde, _network, 0.5, continuous=True)


def test_sampling_model_passes_class_labels():
  seen = []

  def network(params, x, labels, *, train=False, rng=None, class_labels=None):
    seen.append(class_labels)
    return x

  labels = jnp.array([3, 10])
  x, t = jnp.ones((2, 3)), jnp.array([0.2, 0.5])
  for objective in ("dsm", "edm"):
    model = param.sampling_model(objective, sde_lib.VPSDE(), network, None, continuous=True,
                                 class_labels=labels)
    param.as_score_fn(model, sde_lib.VPSDE())(x, t)
    np.testing.assert_array_equal(seen.pop(), labels)
