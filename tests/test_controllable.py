"""Controllable generation against exact answers on Gaussian and Gaussian-mixture data.

Tolerances: sample means within 5 standard errors, variances within 5 standard errors of a sample
variance (sqrt(2 / n) relative for Gaussian data), plus an allowance for the O(1/N) time
discretization at N = 500 (observed <= 0.01 in the mean and <= 4 % in the variance at N = 500-1000).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.samplers import controllable, guidance, ode, pc
from score_sde.diffusion import parametrization
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

N_STEPS = 500
VP = dict(beta_min=0.1, beta_max=20.0, N=N_STEPS)

# A strongly correlated 2-D Gaussian: x_0 observed, x_1 inpainted.
MEAN = np.array([0.5, -0.3])
COV = 0.5 * np.array([[1.0, 0.9], [0.9, 1.0]])
Y = 1.0


def _check_moments(samples, mean, cov, disc_mean=0.01, disc_var=0.04):
  """Sample mean/covariance of samples [n, U] against a Gaussian's, see the module docstring."""
  n = samples.shape[0]
  sd = np.sqrt(np.diag(cov))
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * sd / np.sqrt(n) + disc_mean)
  sample_cov = np.cov(samples.T).reshape(cov.shape)
  tol = (5 * np.sqrt(2.0 / n) + disc_var) * np.outer(sd, sd)
  np.testing.assert_array_less(np.abs(sample_cov - cov), tol)


def _inpaint_gaussian(corrector, n=4000):
  sde = sde_lib.VPSDE(**VP)
  gauss = toy.gaussian(jnp.asarray(MEAN), jnp.asarray(COV))
  data = jnp.tile(jnp.asarray([[Y, 0.0]]), (n, 1))  # x_1 of the data is ignored
  x, info = controllable.inpaint(jax.random.PRNGKey(0), gauss.score_fn(sde), sde, data,
                                jnp.asarray([1.0, 0.0]), corrector=corrector)
  return sde, np.asarray(x), info["nfe"]


def test_inpaint_predictor_only_follows_the_replacement_limit_not_the_conditional(x64):
  sde, x, nfe = _inpaint_gaussian("none")
  assert nfe == N_STEPS
  np.testing.assert_array_equal(x[:, 0], Y)  # observed coordinates are the data
  limit_mean, limit_cov = toy.replacement_limit(sde, MEAN, COV, [0], [Y])
  _check_moments(x[:, 1:], limit_mean, limit_cov)
  # The method's bias (docs/controllable.md): the exact conditional is N(0.15, 0.095), the
  # replacement limit N(0.013, 0.155); the samples must be distinguishable from the former.
  exact_mean, exact_cov = toy.gaussian_conditional(MEAN, COV, [0], [Y])
  assert abs(x[:, 1].mean() - exact_mean[0]) > 0.1
  assert x[:, 1].var() > 1.4 * exact_cov[0, 0]


def test_inpaint_with_langevin_corrector_is_near_the_exact_conditional(x64):
  _, x, nfe = _inpaint_gaussian("langevin")
  assert nfe == 2 * N_STEPS
  exact_mean, exact_cov = toy.gaussian_conditional(MEAN, COV, [0], [Y])
  # Measured bias at N = 500 (docs/controllable.md): mean -0.004, variance +5 %.
  _check_moments(x[:, 1:], exact_mean, exact_cov, disc_var=0.08)


def test_inpaint_images_keeps_observed_pixels_and_broadcasts_the_mask(x64):
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=50)
  gauss = toy.gaussian(jnp.zeros(8), 0.2 * jnp.eye(8) + 0.1)
  flat_score = gauss.score_fn(sde)
  score_fn = lambda x, t: flat_score(x.reshape(x.shape[0], -1), t).reshape(x.shape)
  data = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2, 2))
  mask = jnp.asarray([[[1.0], [0.0]], [[0.0], [1.0]]])  # [H, W, 1]: a diagonal of pixels
  x, _ = controllable.inpaint(jax.random.PRNGKey(2), score_fn, sde, data, mask, eps=1e-5)
  keep = np.broadcast_to(np.asarray(mask) > 0, data.shape)
  np.testing.assert_array_equal(np.asarray(x)[keep], np.asarray(data)[keep])
  assert np.all(np.asarray(x)[~keep] != np.asarray(data)[~keep])


def test_inpaint_takes_a_denoiser(x64):
  """A Denoiser is converted to its score at entry: same samples as the score it came from."""
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=50)
  score_fn = toy.gaussian(jnp.asarray(MEAN), jnp.asarray(COV)).score_fn(sde)
  denoiser = parametrization.Denoiser(fn=parametrization.as_denoiser(score_fn, sde))
  data = jnp.tile(jnp.asarray([[Y, 0.0]]), (8, 1))
  mask = jnp.asarray([1.0, 0.0])
  from_score, _ = controllable.inpaint(jax.random.PRNGKey(0), score_fn, sde, data, mask)
  from_denoiser, _ = controllable.inpaint(jax.random.PRNGKey(0), denoiser, sde, data, mask)
  np.testing.assert_allclose(from_denoiser, from_score, rtol=1e-9, atol=1e-9)
  assert np.all(np.asarray(from_denoiser)[:, 0] == Y)


def test_colorize_matches_the_replacement_limit_in_the_decoupled_basis(x64):
  basis = controllable.COLOR_BASIS
  np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-15)
  np.testing.assert_allclose(basis[:, 0], np.full(3, 3**-0.5))  # first coordinate is gray
  # One pixel whose channels are correlated: x ~ N(mean, cov) in R^3.
  mean = np.array([0.2, -0.1, 0.4])
  cov = 0.3 * np.array([[1.0, 0.6, 0.2], [0.6, 1.0, 0.5], [0.2, 0.5, 1.0]])
  sde = sde_lib.VPSDE(**VP)
  gauss = toy.gaussian(jnp.asarray(mean), jnp.asarray(cov))
  score_fn = lambda x, t: gauss.score_fn(sde)(x.reshape(-1, 3), t).reshape(x.shape)
  n, gray = 4000, 0.5
  x, _ = controllable.colorize(jax.random.PRNGKey(3), score_fn, sde, jnp.full((n, 1, 1, 1), gray),
                               corrector="none")
  x = np.asarray(x).reshape(n, 3)
  np.testing.assert_allclose(x.mean(-1), gray, atol=1e-12)  # the gray image is kept exactly
  # In u = x @ basis the problem is inpainting of N(basis^T mean, basis^T cov basis) given u_0.
  u = x @ basis
  limit_mean, limit_cov = toy.replacement_limit(sde, basis.T @ mean, basis.T @ cov @ basis, [0],
                                                [np.sqrt(3) * gray])
  _check_moments(u[:, 1:], limit_mean, limit_cov)


# --- classifier guidance on a Gaussian mixture with soft class labels ---------------------------

MIX_MEANS = np.array([[-2.0, 0.0], [2.0, 0.0]])  # 8 component std apart
MIX_STD = 0.5
P_Y_GIVEN_K = np.array([[0.7, 0.3], [0.3, 0.7]])  # p(y | component k), rows y


def _mixture_and_classifier(sde):
  mix = toy.isotropic_mixture([0.5, 0.5], jnp.asarray(MIX_MEANS), MIX_STD)
  log_p_y_given_k = jnp.log(jnp.asarray(P_Y_GIVEN_K))

  def log_prob(x, t, y):  # exact log p_t(y | x) = log sum_k p_t(k | x) p(y | k)
    return jax.nn.logsumexp(mix.marginal_log_responsibilities(sde, x, t) + log_p_y_given_k[y],
                            axis=-1)

  return mix, log_prob


@pytest.mark.slow  # ~7 s: 4000 samples in float64
def test_classifier_guidance_scale_one_is_the_exact_conditional_score(x64):
  sde = sde_lib.VPSDE(**VP)
  mix, log_prob = _mixture_and_classifier(sde)
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(4), (64, 2))
  t = jax.random.uniform(jax.random.PRNGKey(5), (64,), minval=1e-3, maxval=1.0)
  for y in (0, 1):
    guided = guidance.classifier_guidance(mix.score_fn(sde), log_prob, jnp.full((64,), y), 1.0)
    # p(x | y) is the mixture with weights proportional to w_k p(y | k).
    conditional = toy.isotropic_mixture(0.5 * P_Y_GIVEN_K[y], jnp.asarray(MIX_MEANS), MIX_STD)
    np.testing.assert_allclose(guided(x, t), conditional.marginal_score(sde, x, t), atol=1e-10)


@pytest.mark.slow  # 7-8 s per scale
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_classifier_guided_samples_reweight_the_components(x64, scale):
  """Scale 1 gives p(x | y) exactly: component weights 0.7 / 0.3 for y = 0 (0.3 / 0.7 for y = 1).

  Scale w > 1: for well-separated components p_t(y | x) is constant on each component once they
  have separated, so guidance reweights them as the tilted density p(x) p(y | x)^w,
  w_k proportional to p(y | k)^w (0.927 at w = 3). Measured: 0.928 (PC), 0.923 (ODE).
  """
  sde = sde_lib.VPSDE(**VP)
  mix, log_prob = _mixture_and_classifier(sde)
  n = 2000
  y = jnp.arange(n) % 2  # per-sample labels, alternating
  guided = guidance.classifier_guidance(mix.score_fn(sde), log_prob, y, scale)
  expected = P_Y_GIVEN_K[0, 0] ** scale / (P_Y_GIVEN_K[0, 0] ** scale + P_Y_GIVEN_K[0, 1] ** scale)
  runs = {"pc": pc.sample_pc(jax.random.PRNGKey(6), guided, sde, (n, 2), corrector="none"),
          "ode": ode.sample_ode(jax.random.PRNGKey(7), guided, sde, (n, 2))}
  for name, (x, _) in runs.items():
    x = np.asarray(x)
    for label, frac_left in ((0, expected), (1, 1 - expected)):
      rows = x[label::2]
      observed = np.mean(rows[:, 0] < 0)
      se = np.sqrt(expected * (1 - expected) / len(rows))
      assert abs(observed - frac_left) < 5 * se + (0 if scale == 1 else 0.01), (name, label)
    if scale == 1.0:  # within a component, the component's own Gaussian
      left = x[x[:, 0] < 0]
      _check_moments(left, MIX_MEANS[0], MIX_STD**2 * np.eye(2))


# --- classifier-free guidance with Gaussian class models -----------------------------------------

def _labelled_score(sde, cond, uncond, null):
  def score(x, t, y):
    return jnp.where((y == null)[:, None], uncond.marginal_score(sde, x, t),
                     cond.marginal_score(sde, x, t))
  return score


def test_cfg_score_is_the_score_of_the_tilted_gaussian(x64):
  """(1 + w) s_c - w s_u is the score of p_t(x|y)^(1+w) / p_t(x)^w: precision (1+w) P_c - w P_u."""
  sde = sde_lib.SubVPSDE(**VP)
  cond = toy.gaussian(jnp.asarray([1.0, 0.5]), jnp.asarray([[0.3, 0.1], [0.1, 0.2]]))
  uncond = toy.gaussian(jnp.asarray([0.0, 0.0]), jnp.asarray([[1.0, 0.2], [0.2, 0.8]]))
  w, n = 2.0, 32
  guided = guidance.classifier_free_guidance(_labelled_score(sde, cond, uncond, 5),
                                                 jnp.zeros((n,), jnp.int32), 5, w)
  x = jax.random.normal(jax.random.PRNGKey(8), (n, 2))
  for t in (0.01, 0.3, 0.9):
    m, std = (float(v[0]) for v in sde.marginal_params(jnp.asarray([t])))
    p_c = np.linalg.inv(m**2 * np.asarray(cond.covs[0]) + std**2 * np.eye(2))
    p_u = np.linalg.inv(m**2 * np.asarray(uncond.covs[0]) + std**2 * np.eye(2))
    precision = (1 + w) * p_c - w * p_u
    linear = (1 + w) * p_c @ (m * np.asarray(cond.means[0])) - w * p_u @ (m * np.asarray(uncond.means[0]))
    expected = linear - np.asarray(x) @ precision.T
    np.testing.assert_allclose(guided(x, jnp.full((n,), t)), expected, atol=1e-10)


@pytest.mark.slow  # ~6 s: 4000 samples in float64
def test_cfg_with_equal_covariances_samples_the_tilted_gaussian(x64):
  """With a shared covariance the tilt of every p_t is the diffusion of N((1+w) mu_c - w mu_u, S):
  guidance is exact, so PC and ODE samples must match that Gaussian."""
  sde = sde_lib.VPSDE(**VP)
  cov = np.array([[0.3, 0.1], [0.1, 0.2]])
  mu_c, mu_u, w, n = np.array([1.0, 0.5]), np.array([0.2, -0.2]), 1.5, 2000
  cond, uncond = toy.gaussian(jnp.asarray(mu_c), jnp.asarray(cov)), toy.gaussian(jnp.asarray(mu_u), jnp.asarray(cov))
  guided = guidance.classifier_free_guidance(_labelled_score(sde, cond, uncond, 10),
                                                 jnp.full((n,), 3), 10, w)
  tilted_mean = (1 + w) * mu_c - w * mu_u
  for x, _ in (pc.sample_pc(jax.random.PRNGKey(9), guided, sde, (n, 2), corrector="none"),
               ode.sample_ode(jax.random.PRNGKey(10), guided, sde, (n, 2))):
    _check_moments(np.asarray(x), tilted_mean, cov)


def test_guided_samplers_do_not_recompile_for_new_labels_or_weights(x64):
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=30)  # N > beta_max: a valid discrete chain
  cond, uncond = toy.gaussian(jnp.ones(2), jnp.eye(2)), toy.gaussian(jnp.zeros(2), jnp.eye(2))
  labelled = _labelled_score(sde, cond, uncond, 2)
  before = None
  for y, w in ((0, 1.0), (1, 3.0)):
    guided = guidance.classifier_free_guidance(labelled, jnp.full((4,), y), 2, w)
    pc.sample_pc(jax.random.PRNGKey(0), guided, sde, (4, 2))
    size = pc._sample_pc._cache_size()
    assert before is None or size == before
    before = size


def test_bad_inputs_get_clear_errors():
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=10)
  score_fn = lambda x, t: -x
  data = jnp.zeros((2, 4, 4, 3))
  with pytest.raises(ValueError, match="does not broadcast"):
    controllable.inpaint(jax.random.PRNGKey(0), score_fn, sde, data, jnp.ones((3, 3, 1)))
  with pytest.raises(ValueError, match="only 0"):
    controllable.inpaint(jax.random.PRNGKey(0), score_fn, sde, data, jnp.full((4, 4, 1), 0.5))
  with pytest.raises(ValueError, match=r"\[B, H, W, 1\]"):
    controllable.colorize(jax.random.PRNGKey(0), score_fn, sde, data)
  with pytest.raises(ValueError, match="one class label per sample"):
    guidance.classifier_free_guidance(lambda x, t, y: x, jnp.zeros((2, 1)), 10, 1.0)
