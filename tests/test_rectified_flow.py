"""Rectified flow (Liu et al. 2023): the SDE, the velocity parametrization, the flow-matching loss
and the fixed-step flow sampler, against closed forms.

For x_0 ~ N(μ, Σ) and z ~ N(0, I) independent, x_t = (1 - t) x_0 + t z is jointly Gaussian with
(x_0, z), so E[z - x_0 | x_t] = -μ + (t I - (1 - t) Σ) C_t^-1 (x_t - (1 - t) μ) with
C_t = (1 - t)² Σ + t² I; a mixture averages these with the posterior component weights. For
N(μ, s² I) data on any SDE the flow-matching target m' x_0 + std' z has the conditional variance
s² (m' std - m std')² / (m² s² + std²) per dimension, which is 1 / ((1 - t)² + t² / s²) for
rectified flow: the loss's irreducible value.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from score_sde.diffusion import losses
from score_sde.diffusion import parametrization as param
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy
from score_sde.samplers import SAMPLERS, common, likelihood
from tests import sampler_checks

TIMES = np.array([1e-3, 0.05, 0.3, 0.6, 0.95, 0.999])
MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.2], [0.2, 0.3]])


def _mixture():
  """Three anisotropic components in 2-D."""
  covs = np.stack([SIGMA, np.diag([0.2, 0.6]), np.array([[0.4, -0.1], [-0.1, 0.25]])])
  return toy.GaussianMixture(weights=jnp.asarray([0.2, 0.5, 0.3]),
                             means=jnp.asarray([[-2.0, 0.5], [1.5, 1.0], [0.5, -2.0]]),
                             covs=jnp.asarray(covs))


# --- the SDE ----------------------------------------------------------------------------------

def test_schedule_matches_closed_form(x64):
  sde = sde_lib.RectifiedFlow()
  t = jnp.asarray(TIMES)
  m, std = sde.marginal_params(t)
  np.testing.assert_allclose(m, 1.0 - TIMES, rtol=1e-15)
  np.testing.assert_allclose(std, TIMES, rtol=1e-15)
  x = jax.random.normal(jax.random.PRNGKey(0), (len(TIMES), 3))
  drift, diffusion = sde.sde(x, t)
  np.testing.assert_allclose(drift, -np.asarray(x) / (1.0 - TIMES[:, None]), rtol=1e-14)
  np.testing.assert_allclose(diffusion, np.sqrt(2 * TIMES / (1 - TIMES)), rtol=1e-14)
  # The codebase's λ = log(m / std); REFERENCE.md's 2 log((1 - t)/t) is log(m² / std²).
  np.testing.assert_allclose(sde.log_snr(t), np.log((1 - TIMES) / TIMES), rtol=1e-14)
  np.testing.assert_allclose(sde.noise_labels(t, True), 999.0 * TIMES, rtol=1e-15)
  np.testing.assert_allclose(sde.score_from_output(x, t, True), -np.asarray(x) / TIMES[:, None],
                             rtol=1e-14)
  np.testing.assert_array_equal(sde.langevin_step_scale(t), 1.0)
  assert sde.default_eps == 1e-3 and sde.discrete_loss is None and sde.prior_std == 1.0


def test_marginals_follow_from_drift_and_diffusion(x64):
  """dm/dt = f m and d std²/dt = 2 f std² + g²: the moment equations of the linear SDE."""
  sde = sde_lib.RectifiedFlow()
  t = jnp.asarray(TIMES)
  (m, std), (dm, dstd) = jax.jvp(sde.marginal_params, (t,), (jnp.ones_like(t),))
  f, g = sde.drift_coef(t), sde.diffusion_coef(t)
  np.testing.assert_allclose(dm, f * m, rtol=1e-12)
  np.testing.assert_allclose(2 * std * dstd, 2 * f * std**2 + g**2, rtol=1e-12)


def test_T_is_a_static_field_below_one():
  sde = sde_lib.RectifiedFlow()
  assert sde_lib.SDES["rectified_flow"] is sde_lib.RectifiedFlow
  assert sde.T == pytest.approx(1.0 - 1e-3) and sde.N == 1000
  assert jax.tree_util.tree_leaves(sde) == []  # T and N are static: no traced leaves
  assert sde.reverse(lambda x, t: -x).T == sde.T
  short = sde_lib.RectifiedFlow(T=0.5, N=10)
  traced_T = jax.jit(lambda s: jnp.asarray(s.T) + 0.0)(short)
  assert float(traced_T) == 0.5
  assert sde_lib.VPSDE().T == 1.0  # the class attribute of the other SDEs is untouched
  for bad in (1.0, 0.0, 1.5):
    with pytest.raises(ValueError, match="0 < T < 1"):
      sde_lib.RectifiedFlow(T=bad)


# --- velocity parametrization -----------------------------------------------------------------

def test_velocity_conversions_closed_form_and_round_trip(x64):
  sde = sde_lib.RectifiedFlow()
  t = jnp.asarray(TIMES)
  coefs = [c[:, None] for c in param.marginal_coefficients(sde, t)]
  kx, kv = jax.random.split(jax.random.PRNGKey(1))
  x, v = 2.0 * jax.random.normal(kx, (len(TIMES), 3)), jax.random.normal(kv, (len(TIMES), 3))
  tt = TIMES[:, None]
  np.testing.assert_allclose(param.data_from_velocity(x, v, *coefs), x - tt * v, rtol=1e-12,
                             atol=1e-12)
  score = param.score_from_velocity(x, v, *coefs)
  np.testing.assert_allclose(score, -(x + (1 - tt) * v) / tt, rtol=1e-12, atol=1e-12)
  eps = param.noise_from_velocity(x, v, *coefs)
  np.testing.assert_allclose(param.velocity_from_noise(x, eps, *coefs), v, rtol=1e-12, atol=1e-12)
  eps_back = param.noise_from_score(score, coefs[1])
  np.testing.assert_allclose(param.velocity_from_noise(x, eps_back, *coefs), v, rtol=1e-10,
                             atol=1e-10)


def _conditional_velocity(x, t, weights, means, covs):
  """E[z - x_0 | x_t] for mixture data, by Gaussian conditioning (NumPy, one row at a time)."""
  out = []
  for xi, ti in zip(np.asarray(x), t):
    log_r, parts = [], []
    for w, mu, cov in zip(weights, means, covs):
      c = (1 - ti) ** 2 * cov + ti**2 * np.eye(len(mu))
      log_r.append(np.log(w) + stats.multivariate_normal(mean=(1 - ti) * mu, cov=c).logpdf(xi))
      gain = (ti * np.eye(len(mu)) - (1 - ti) * cov) @ np.linalg.inv(c)
      parts.append(-mu + gain @ (xi - (1 - ti) * mu))
    r = np.exp(np.asarray(log_r) - np.logaddexp.reduce(log_r))
    out.append(r @ np.stack(parts))
  return np.stack(out)


@pytest.mark.parametrize("data", ["gaussian", "mixture"])
def test_exact_velocity_is_the_conditional_mean_of_noise_minus_data(data, x64):
  sde = sde_lib.RectifiedFlow()
  dist = toy.gaussian(jnp.asarray(MU), jnp.asarray(SIGMA)) if data == "gaussian" else _mixture()
  t = jnp.asarray(TIMES)
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (len(TIMES), 2))
  v = param.velocity_prediction(dist.score_fn(sde), sde)(x, t)
  expected = _conditional_velocity(x, TIMES, *(np.asarray(a) for a in
                                               (dist.weights, dist.means, dist.covs)))
  np.testing.assert_allclose(v, expected, rtol=1e-9, atol=1e-9)
  # A network predicting this velocity is turned back into the exact score.
  network = lambda params, x, labels, *, train=False, rng=None: jnp.asarray(expected)
  score_fn = param.sampling_model("flow_matching", sde, network, None, continuous=True)
  np.testing.assert_allclose(score_fn(x, t), dist.marginal_score(sde, x, t), rtol=1e-9, atol=1e-9)


def test_velocity_score_fn_feeds_labels_and_class_labels(x64):
  seen = {}

  def network(params, x, labels, *, train=False, rng=None, class_labels=None):
    seen.update(labels=labels, class_labels=class_labels, train=train)
    return params * x

  sde = sde_lib.RectifiedFlow()
  x, t = jnp.ones((2, 3)), jnp.array([0.2, 0.5])
  score = param.get_velocity_score_fn(sde, network, 0.5, class_labels=jnp.array([1, 4]))(x, t)
  np.testing.assert_allclose(seen["labels"], 999.0 * t)
  np.testing.assert_array_equal(seen["class_labels"], [1, 4])
  assert seen["train"] is False
  np.testing.assert_allclose(score, -(x + (1 - t[:, None]) * 0.5 * x) / t[:, None], rtol=1e-14)
  with pytest.raises(ValueError, match="'flow_matching'"):
    param.sampling_model("flow", sde, network, 0.5, continuous=True)


# --- samplers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, options", [
    pytest.param("flow", dict(num_steps=32, solver="heun"), marks=pytest.mark.slow),
    pytest.param("ode", dict(rtol=1e-4, atol=1e-4), marks=pytest.mark.slow),
    ("pc", dict(predictor="reverse_diffusion", corrector="langevin")),
    ("pc", dict(predictor="euler_maruyama", corrector="none")),
    ("ddim", dict(num_steps=50)),
    ("dpm_solver", dict(num_steps=20)),
])
def test_samplers_match_the_mixture(name, options):
  """Every sampler runs unchanged on rectified flow and matches the 2-D mixture of sampler_checks
  (2000 samples; thresholds in Monte-Carlo standard errors, see there) with its exact score."""
  sde = sde_lib.RectifiedFlow(N=sampler_checks.N_STEPS)
  x, info = SAMPLERS[name](jax.random.PRNGKey(0), sampler_checks.isotropic_score_fn(sde), sde,
                           (sampler_checks.N_SAMPLES, 2), **options)
  assert info["nfe"] > 0
  sampler_checks.assert_matches_mixture(x)


def _gaussian_flow_map(sde, x_T, t, mean, s):
  """The probability-flow map of N(mean, s² I) data: x_t = m μ + √(C_t / C_T) (x_T - m_T μ)."""
  m, std = (float(v) for v in sde.marginal_params(jnp.asarray(t)))
  m_T, std_T = (float(v) for v in sde.marginal_params(jnp.asarray(sde.T)))
  c, c_T = m**2 * s**2 + std**2, m_T**2 * s**2 + std_T**2
  return m * mean + np.sqrt(c / c_T) * (np.asarray(x_T) - m_T * mean)


@pytest.mark.parametrize("solver, order", [("euler", 1), ("heun", 2)])
def test_flow_sampler_convergence_order(solver, order, x64):
  """The error against the closed-form flow of Gaussian data halves (Euler) or quarters (Heun) with
  the step; ``denoise`` adds the data prediction at eps."""
  sde = sde_lib.RectifiedFlow()
  mean, s, eps = np.array([1.0, -2.0]), 0.5, 1e-2
  gauss = toy.gaussian(jnp.asarray(mean), s**2 * jnp.eye(2))
  key, shape = jax.random.PRNGKey(3), (64, 2)
  x_T = common.prior_sample(common.sample_keys(key, 64), sde, shape, jnp.float64)
  exact = _gaussian_flow_map(sde, x_T, eps, mean, s)
  errors = []
  for n in (16, 32, 64):
    x, info = SAMPLERS["flow"](key, gauss.score_fn(sde), sde, shape, num_steps=n, solver=solver,
                               eps=eps, denoise=False)
    assert info["nfe"] == n * order
    errors.append(np.abs(np.asarray(x) - exact).max())
  # Observed orders log2(e_N / e_2N); the Heun ratio is still pre-asymptotic at N = 16 (~1.9).
  orders = np.log2(np.asarray(errors[:-1]) / np.asarray(errors[1:]))
  np.testing.assert_allclose(orders, order, atol=0.2)
  x, info = SAMPLERS["flow"](key, gauss.score_fn(sde), sde, shape, num_steps=32, solver=solver,
                             eps=eps)
  assert info["nfe"] == 32 * order + 1
  x_eps, _ = SAMPLERS["flow"](key, gauss.score_fn(sde), sde, shape, num_steps=32, solver=solver,
                              eps=eps, denoise=False)
  x0 = param.data_prediction(gauss.score_fn(sde), sde)(x_eps, jnp.full((64,), eps))
  np.testing.assert_allclose(x, x0, rtol=1e-12, atol=1e-12)


def test_flow_sampler_rejects_bad_options():
  sde, score_fn = sde_lib.RectifiedFlow(), lambda x, t: -x
  with pytest.raises(ValueError, match="Unknown solver 'rk4'.*'euler', 'heun'"):
    SAMPLERS["flow"](jax.random.PRNGKey(0), score_fn, sde, (2, 2), solver="rk4")
  with pytest.raises(ValueError, match="num_steps >= 1"):
    SAMPLERS["flow"](jax.random.PRNGKey(0), score_fn, sde, (2, 2), num_steps=0)
  with pytest.raises(ValueError, match=r"eps must be in \(0, T = 0.999\]"):
    SAMPLERS["flow"](jax.random.PRNGKey(0), score_fn, sde, (2, 2), eps=1.0)


@pytest.mark.slow  # 5-10 s on 2 cores; the fast tier stays under 3 minutes
def test_likelihood_matches_the_mixture_density(x64):
  """log p from the probability-flow ODE with the exact score, corrected for the prior mismatch.

  The solve maps x at eps to z at T exactly (up to solver error), with log p_eps(x) =
  log p_T(z) + Δ; ``log_likelihood`` uses the prior N(0, I) for log p_T(z), which at T = 1 - 1e-3
  is not p_T = Σ_k w_k N(m_T μ_k, m_T² Σ_k + T² I). Replacing it recovers p_eps to the solver's
  accuracy (rtol = atol = 1e-7 on Δ of size ~1: 1e-5 covers it); the uncorrected value is off by
  the prior mismatch, ~1e-3 here.
  """
  sde = sde_lib.RectifiedFlow()
  mixture = _mixture()
  x = mixture.sample(jax.random.PRNGKey(4), 6)
  eps = 1e-5
  logp, z, _ = likelihood.log_likelihood(jax.random.PRNGKey(0), mixture.score_fn(sde), sde, x,
                                         divergence="exact", rtol=1e-7, atol=1e-7, eps=eps)
  T = jnp.full((6,), sde.T)
  mismatch = mixture.marginal_log_prob(sde, z, T) - sde.prior_logp(z)
  expected = mixture.marginal_log_prob(sde, x, jnp.full((6,), eps))
  np.testing.assert_allclose(logp + mismatch, expected, atol=1e-5)
  assert np.abs(np.asarray(mismatch)).max() > 1e-4
  # p_eps is p_0 to O(eps).
  np.testing.assert_allclose(expected, mixture.log_prob(x), atol=1e-3)


# --- the flow-matching loss -------------------------------------------------------------------

DIM, BATCH = 4, 8192
S = 0.7  # data N(MEAN, S² I)
MEAN = np.array([1.0, -0.5, 0.25, 2.0])


def _vp_coefficients(t, beta_min=0.1, beta_max=20.0):
  m = np.exp(-0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min)
  dm = -0.5 * (beta_min + t * (beta_max - beta_min)) * m
  std = np.sqrt(1 - m**2)
  return m, std, dm, -m * dm / std


def _coefficients(sde, t):
  if isinstance(sde, sde_lib.RectifiedFlow):
    return 1 - t, t, -np.ones_like(t), np.ones_like(t)
  return _vp_coefficients(t)


def _irreducible(sde, t):
  """Var(m' x_0 + std' z | x_t) per dimension for N(μ, S² I) data."""
  m, std, dm, dstd = _coefficients(sde, t)
  return S**2 * (dm * std - m * dstd) ** 2 / (m**2 * S**2 + std**2)


def _exact_velocity_model(sde):
  """model_fn(params, x, labels): a v* + b, v* = E[m' x_0 + std' z | x_t], t = labels / 999."""

  def model_fn(params, x, labels, *, train, rng):
    del train, rng
    m, std, dm, dstd = (c[:, None] for c in param.marginal_coefficients(sde, labels / 999.0))
    gain = (m * dm * S**2 + std * dstd) / (m**2 * S**2 + std**2)
    v = dm * MEAN + gain * (x - m * MEAN)
    return params["a"] * v + params["b"]

  return model_fn


@pytest.mark.slow  # 5-9 s each on 2 cores; the fast tier stays under 3 minutes
@pytest.mark.parametrize("sde, time_sampling", [
    pytest.param(sde_lib.RectifiedFlow(T=0.5), "max", id="rf-t=0.5"),  # t = 0.5 for every sample
    pytest.param(sde_lib.RectifiedFlow(), "uniform", id="rf-uniform"),
    pytest.param(sde_lib.VPSDE(), "uniform", id="vp-uniform"),
])
def test_flow_matching_loss_at_the_exact_velocity(sde, time_sampling, x64):
  """1. The loss of v* is its irreducible value E_t Var(target | x_t) (quadrature over uniform t)
  within 4 Monte-Carlo standard errors of the per-sample losses.
  2. Its gradient along v = a v* + b is zero at (1, 0) within 4 standard errors of the per-sample
  gradients (v* is the conditional mean of the target), and a wrong velocity scores higher."""
  eps = 1e-3
  loss_fn = losses.get_loss_fn("flow_matching", sde, _exact_velocity_model(sde), train=True,
                               reduce_mean=True, eps=eps, time_sampling=time_sampling)
  key_data, key_loss = jax.random.split(jax.random.PRNGKey(5))
  x0 = MEAN + S * jax.random.normal(key_data, (BATCH, DIM))
  exact = {"a": jnp.float64(1.0), "b": jnp.float64(0.0)}
  loss, aux = jax.jit(loss_fn)(exact, key_loss, x0)
  per_sample = np.asarray(aux["losses"])
  if time_sampling == "max":
    expected = _irreducible(sde, np.asarray(sde.T))
  else:
    expected = integrate.quad(lambda t: _irreducible(sde, t), eps, sde.T)[0] / (sde.T - eps)
  standard_error = per_sample.std() / np.sqrt(BATCH)
  assert abs(float(loss) - expected) < 4 * standard_error, (float(loss), expected)

  grads = jax.jacrev(lambda p: loss_fn(p, key_loss, x0)[1]["losses"])(exact)
  for name, g in grads.items():
    g = np.asarray(g)
    assert abs(g.mean()) < 4 * g.std() / np.sqrt(BATCH), name
  wrong = {"a": jnp.float64(1.1), "b": jnp.float64(0.2)}
  diff = np.asarray(loss_fn(wrong, key_loss, x0)[1]["losses"]) - per_sample
  assert diff.mean() > 4 * diff.std() / np.sqrt(BATCH)


def _recording_model(seen):
  def model_fn(params, x, labels, *, train, rng):
    del train, rng
    seen.append(np.asarray(labels) / 999.0)
    return params * x

  return model_fn


def test_given_noise_is_the_coupling():
  """With ``noise`` z the loss is reduce(||v(x_t) - (z - x_0)||²) at x_t = (1 - t) x_0 + t z; the
  key draws only t, the same t as without ``noise``."""
  sde = sde_lib.RectifiedFlow()
  seen = []
  loss_fn = losses.get_flow_matching_loss_fn(sde, _recording_model(seen), train=True)
  kx, kz = jax.random.split(jax.random.PRNGKey(6))
  x0, z = jax.random.normal(kx, (16, 3)), jax.random.normal(kz, (16, 3))
  key = jax.random.PRNGKey(7)
  loss, aux = loss_fn(0.3, key, x0, noise=z)
  t = seen[-1][:, None]
  np.testing.assert_allclose(aux["losses"], np.mean((0.3 * ((1 - t) * x0 + t * z) - (z - x0)) ** 2,
                                                    axis=-1), rtol=1e-5)
  loss_fresh, _ = loss_fn(0.3, key, x0)
  np.testing.assert_array_equal(seen[-1], seen[-2])  # same key, same t
  assert float(loss_fresh) != float(loss)
  assert float(loss_fn(0.3, key, x0, noise=z)[0]) == float(loss)
  # One-step distillation (t = T): the key no longer matters once the noise is given.
  distill = losses.get_flow_matching_loss_fn(sde, _recording_model(seen), train=True,
                                             time_sampling="max")
  a, b = (float(distill(0.3, jax.random.PRNGKey(k), x0, noise=z)[0]) for k in (0, 1))
  assert a == b


def test_time_sampling_choices():
  sde, eps, n = sde_lib.RectifiedFlow(), 0.05, 20000
  x0 = jnp.zeros((n, 1))

  def draw(**options):
    seen = []
    losses.get_flow_matching_loss_fn(sde, _recording_model(seen), train=True, eps=eps,
                                     **options)(1.0, jax.random.PRNGKey(8), x0)
    return seen[0]

  t = draw(time_sampling="logit_normal", logit_mean=0.5, logit_std=1.0)
  assert t.min() >= eps and t.max() <= sde.T
  median = sde.T * jax.nn.sigmoid(0.5)
  # Standard error of a sample median: 1 / (2 f(median) √n), f the density of t = T sigmoid(n).
  density = stats.norm.pdf(0.0) / (sde.T * jax.nn.sigmoid(0.5) * (1 - jax.nn.sigmoid(0.5)))
  assert abs(np.median(t) - median) < 4 / (2 * density * np.sqrt(n))
  wide = draw(time_sampling="logit_normal", logit_std=3.0)
  assert wide.min() == pytest.approx(eps, rel=1e-5) and wide.max() <= sde.T
  np.testing.assert_allclose(draw(time_sampling="max"), sde.T, rtol=1e-7)
  uniform = draw()
  assert uniform.min() >= eps and uniform.max() <= sde.T
  model_fn = _recording_model([])
  with pytest.raises(ValueError, match="Unknown time_sampling 'beta'.*'uniform', 'logit_normal'"):
    losses.get_loss_fn("flow_matching", sde, model_fn, train=True, time_sampling="beta")
  with pytest.raises(ValueError, match="logit_std"):
    losses.get_flow_matching_loss_fn(sde, model_fn, train=True, time_sampling="logit_normal",
                                     logit_std=0.0)
