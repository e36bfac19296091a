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
