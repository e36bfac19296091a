"""Probability-flow log-likelihoods against analytic Gaussian-mixture densities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.samplers import likelihood
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

ALL_SDES = [
    pytest.param(sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), id="ve"),
    pytest.param(sde_lib.VPSDE(), id="vp"),
    pytest.param(sde_lib.SubVPSDE(), id="subvp"),
]
EPS = 1e-5


def _mixture():
  """A 2-D mixture with correlated, unequal components."""
  return toy.GaussianMixture(weights=jnp.array([0.4, 0.6]),
                             means=jnp.array([[-1.5, 0.5], [1.0, -0.5]]),
                             covs=jnp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.15, -0.05], [-0.05, 0.4]]]))


def _prior_mismatch(mix, sde, z):
  """log p_T(z) - prior_logp(z): the ODE likelihood uses the prior in place of the true p_T."""
  return mix.marginal_log_prob(sde, z, jnp.full((z.shape[0],), sde.T)) - sde.prior_logp(z)


@pytest.mark.slow
@pytest.mark.parametrize("sde", ALL_SDES)
def test_exact_divergence_matches_analytic_log_density(sde, x64):
  mix = _mixture()
  x = mix.sample(jax.random.PRNGKey(0), 6)
  logp, z, nfe = likelihood.log_likelihood(jax.random.PRNGKey(1), mix.score_fn(sde), sde, x,
                                           divergence="exact", eps=EPS)
  assert logp.shape == (6,) and z.shape == x.shape and int(nfe) > 0
  # The ODE maps p_eps to p_T exactly with the exact score, so after swapping the prior for the
  # true p_T the result is the analytic log p_eps(x); the integration error is ~1e-5 nats here.
  analytic = mix.marginal_log_prob(sde, x, jnp.full((6,), EPS))
  per_dim_error = np.abs(logp + _prior_mismatch(mix, sde, z) - analytic) / x.shape[1]
  assert per_dim_error.max() < 1e-3, per_dim_error


@pytest.mark.slow
@pytest.mark.parametrize("divergence", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(divergence, x64):
  """Replicating one point across the batch gives independent probes (probe b = fold_in(key, b))."""
  sde, mix, n = sde_lib.VPSDE(), _mixture(), 128
  x = jnp.broadcast_to(jnp.array([[0.3, -0.2]]), (n, 2))
  # Tolerance 1e-4: the solver error (~1e-4 nats) is far below the estimator's SE (~1e-2).
  tol = dict(rtol=1e-4, atol=1e-4)
  exact, _, _ = likelihood.log_likelihood(jax.random.PRNGKey(0), mix.score_fn(sde), sde, x[:1],
                                          divergence="exact", **tol)
  estimates, _, _ = likelihood.log_likelihood(jax.random.PRNGKey(1), mix.score_fn(sde), sde, x,
                                              divergence=divergence, **tol)
  estimates = np.asarray(estimates)
  se = estimates.std(ddof=1) / math.sqrt(n)
  assert estimates.std() > 1e-3, "probes must differ between samples"
  assert abs(estimates.mean() - float(exact[0])) < 4 * se, (estimates.mean(), float(exact[0]), se)


def test_bad_arguments_are_rejected():
  score_fn = lambda x, t: -x
  with pytest.raises(ValueError, match="Unknown divergence"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), score_fn, sde_lib.VPSDE(), jnp.zeros((2, 2)),
                              divergence="hutchinson")
  with pytest.raises(ValueError, match="n_repeats"):
    likelihood.bits_per_dim(jax.random.PRNGKey(0), score_fn, sde_lib.VPSDE(), jnp.zeros((2, 2)),
                            centered=True, n_repeats=0)


def test_log_likelihood_compiles_once():
  traces = []

  def score_fn(x, t):
    traces.append(1)
    return -x

  sde = sde_lib.VPSDE()
  likelihood.log_likelihood(jax.random.PRNGKey(0), score_fn, sde, jnp.ones((4, 2)), rtol=1e-3, atol=1e-3)
  n = len(traces)
  likelihood.log_likelihood(jax.random.PRNGKey(1), score_fn, sde, jnp.zeros((4, 2)), rtol=1e-4, atol=1e-4)
  assert len(traces) == n > 0


# --- step_control: 'per_sample' (default) vs 'batch' -------------------------------------------

GAUSSIAN_SDES = [
    pytest.param(sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), id="ve"),
    pytest.param(sde_lib.VPSDE(), id="vp"),
]


def _gaussian():
  """2-D Gaussian data with a correlated covariance: its diffused log-density is closed-form."""
  return toy.gaussian(jnp.array([0.5, -0.3]), jnp.array([[0.3, 0.1], [0.1, 0.2]]))


@pytest.mark.slow
@pytest.mark.parametrize("sde", GAUSSIAN_SDES)
def test_batch_step_control_matches_closed_form_like_per_sample(sde, x64):
  """Both step controls give the analytic log p_eps(x) of Gaussian data to the same tolerance."""
  data = _gaussian()
  x = data.sample(jax.random.PRNGKey(0), 5)
  analytic = data.marginal_log_prob(sde, x, jnp.full((5,), EPS))
  errors = {}
  for control in likelihood.STEP_CONTROLS:
    logp, z, nfe = likelihood.log_likelihood(jax.random.PRNGKey(1), data.score_fn(sde), sde, x,
                                             divergence="exact", eps=EPS, step_control=control)
    assert logp.shape == (5,) and z.shape == x.shape
    assert np.ndim(nfe) == 0 and int(nfe) > 0  # one count for the whole batch
    errors[control] = np.abs(logp + _prior_mismatch(data, sde, z) - analytic) / x.shape[1]
  assert errors["per_sample"].max() < 1e-3, errors
  assert errors["batch"].max() < 1e-3, errors


@pytest.mark.slow  # 5-7 s: two adaptive solves
def test_batch_step_control_of_copies_is_the_per_sample_solve(x64):
  """B copies of one sample have the RMS error norm of that sample alone: the batch solve takes
  the per-sample solve's steps, so its NFE and log-likelihoods are the per-sample ones."""
  sde, data = sde_lib.VPSDE(), _gaussian()
  x = jnp.broadcast_to(jnp.array([[0.2, -0.4]]), (3, 2))
  kw = dict(divergence="exact", eps=EPS, rtol=1e-4, atol=1e-4)
  one, _, nfe_one = likelihood.log_likelihood(jax.random.PRNGKey(0), data.score_fn(sde), sde, x[:1],
                                              **kw)
  batch, _, nfe_batch = likelihood.log_likelihood(jax.random.PRNGKey(0), data.score_fn(sde), sde, x,
                                                  step_control="batch", **kw)
  assert int(nfe_batch) == int(nfe_one)
  np.testing.assert_allclose(batch, np.full(3, float(one[0])), rtol=1e-10)


@pytest.mark.slow
def test_per_sample_step_control_is_independent_of_the_batch(x64):
  """With 'per_sample' a sample's log-likelihood (and probe) does not depend on the other samples:
  the first two of a batch of five equal a batch of those two; 'batch' only agrees to tolerance."""
  sde, data = sde_lib.VPSDE(), _gaussian()
  x = data.sample(jax.random.PRNGKey(0), 5).at[4].set(jnp.array([3.0, -3.0]))  # one hard sample
  kw = dict(eps=EPS, rtol=1e-4, atol=1e-4)
  key = jax.random.PRNGKey(1)
  full, _, _ = likelihood.log_likelihood(key, data.score_fn(sde), sde, x, **kw)
  part, _, _ = likelihood.log_likelihood(key, data.score_fn(sde), sde, x[:2], **kw)
  np.testing.assert_allclose(full[:2], part, rtol=1e-12)
  full_b, _, _ = likelihood.log_likelihood(key, data.score_fn(sde), sde, x, step_control="batch", **kw)
  part_b, _, _ = likelihood.log_likelihood(key, data.score_fn(sde), sde, x[:2], step_control="batch",
                                           **kw)
  np.testing.assert_allclose(full_b[:2], part_b, atol=1e-2 * x.shape[1])
  np.testing.assert_allclose(full_b, full, atol=1e-2 * x.shape[1])


def test_bad_step_control_is_rejected():
  score_fn, sde, x = (lambda x, t: -x), sde_lib.VPSDE(), jnp.zeros((2, 2))
  with pytest.raises(ValueError, match="Unknown step_control 'global'"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), score_fn, sde, x, step_control="global")
  with pytest.raises(ValueError, match="Unknown step_control"):
    likelihood.bits_per_dim(jax.random.PRNGKey(0), score_fn, sde, x, centered=True,
                            step_control="per-sample")


def test_config_bpd_step_control_is_read_and_validated():
  from configs.digits import ddpmpp_vp_small
  from score_sde.experiment import builders
  config = ddpmpp_vp_small.get_shared_config()
  assert builders.get_eval_options(config).bpd_step_control == "per_sample"  # the default
  assert builders.get_eval_options(ddpmpp_vp_small.get_config()).bpd_step_control == "batch"
  config.eval.bpd_step_control = "batch"
  assert builders.get_eval_options(config).bpd_step_control == "batch"
  config.eval.bpd_step_control = "global"
  with pytest.raises(ValueError, match="config.eval.bpd_step_control='global'"):
    builders.get_eval_options(config)
