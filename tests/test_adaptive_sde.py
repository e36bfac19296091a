"""Gotta Go Fast adaptive SDE solver: target moments, per-sample step control, tolerance vs NFE,
and fewer evaluations than Euler-Maruyama for the same error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.samplers import adaptive_sde, common
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.2], [0.2, 0.3]])


def _gaussian():
  return toy.gaussian(jnp.asarray(MU), jnp.asarray(SIGMA))


def _moment_error(x):
  """|mean - μ| + |cov - Σ|_max of samples x [n, 2]."""
  x = np.asarray(x)
  return np.abs(x.mean(0) - MU).max() + np.abs(np.cov(x.T) - SIGMA).max()


def _euler_maruyama(key, score_fn, sde, shape, num_steps, eps=1e-3):
  """Independent Euler-Maruyama on the reverse SDE (the reference's predictor), returning the mean of
  the last step."""
  reverse = sde.reverse(score_fn)
  keys = common.sample_keys(key, shape[0])
  times = jnp.linspace(sde.T, eps, num_steps)
  dt = -1.0 / num_steps

  def step(i, carry):
    x, _ = carry
    drift, g = reverse.sde(x, jnp.full((shape[0],), times[i]))
    mean = x + drift * dt
    return mean + g[:, None] * np.sqrt(-dt) * common.per_sample_normal(common.fold_in_all(keys, i + 1), shape, x.dtype), mean

  x = common.prior_sample(keys, sde, shape, jnp.float64)
  return jax.lax.fori_loop(0, num_steps, step, (x, x))[1]


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0)],
                         ids=["vp", "ve"])
def test_matches_target_moments_with_per_sample_steps(sde, x64):
  n = 3000
  x, info = adaptive_sde.sample_adaptive_sde(jax.random.PRNGKey(0), _gaussian().score_fn(sde), sde,
                                             (n, 2), rtol=0.05, atol=0.01, eps=1e-3, denoise=False)
  x = np.asarray(x)
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * np.sqrt(np.diag(SIGMA) / n) + 0.01)
  se_cov = np.sqrt((np.outer(np.diag(SIGMA), np.diag(SIGMA)) + SIGMA**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - SIGMA), 5 * se_cov + 0.02)
  per_sample = np.asarray(info["nfe_per_sample"])
  # Step control is per sample: counts differ between samples; the batch cost is the largest.
  assert per_sample.min() < per_sample.max()
  assert int(info["nfe"]) == per_sample.max()
  np.testing.assert_array_equal(per_sample, 2 * (np.asarray(info["accepted"]) + np.asarray(info["rejected"])))


def test_sample_does_not_depend_on_batch(x64):
  sde = sde_lib.VPSDE()
  kw = dict(rtol=0.05, atol=0.01)
  big, info = adaptive_sde.sample_adaptive_sde(jax.random.PRNGKey(1), _gaussian().score_fn(sde), sde,
                                               (32, 2), **kw)
  small, info_small = adaptive_sde.sample_adaptive_sde(jax.random.PRNGKey(1), _gaussian().score_fn(sde),
                                                       sde, (5, 2), **kw)
  np.testing.assert_allclose(small, big[:5], rtol=1e-12)
  np.testing.assert_array_equal(info_small["nfe_per_sample"], info["nfe_per_sample"][:5])


@pytest.mark.slow
def test_reaches_euler_maruyama_1000_error_with_far_fewer_evaluations(x64):
  """Expected shape (Jolicoeur-Martineau et al. 2021, Fig. 1): at the default tolerances the adaptive
  solver's moment error is within the EM-1000 error plus sampling noise, at a fraction of its NFE."""
  sde = sde_lib.VPSDE()
  score_fn = _gaussian().score_fn(sde)
  n = 20_000
  x_em = _euler_maruyama(jax.random.PRNGKey(2), score_fn, sde, (n, 2), 1000)
  x_ad, info = adaptive_sde.sample_adaptive_sde(jax.random.PRNGKey(3), score_fn, sde, (n, 2),
                                                denoise=False)
  # The moment errors' sampling noise at n = 20000: cov entries have SE <= 0.005, means <= 0.005.
  noise = 3 * 0.005 * 2
  assert _moment_error(x_ad) < _moment_error(x_em) + noise, (_moment_error(x_ad), _moment_error(x_em))
  # Measured: ~390 evaluations per sample on average at the defaults (ε_rel = 0.01, ε_abs = 0.0078).
  assert float(jnp.mean(info["nfe_per_sample"])) < 1000 / 2, info["nfe"]


def test_bad_input_is_rejected():
  with pytest.raises(ValueError, match="rtol must be positive"):
    adaptive_sde.sample_adaptive_sde(jax.random.PRNGKey(0), lambda x, t: -x, sde_lib.VPSDE(), (2, 2),
                                     rtol=0.0)
