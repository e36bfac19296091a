"""Probability-flow ODE sampler, encode/decode and the solver's function-evaluation count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import sampler_checks
from score_sde import sampling
from score_sde import sde as sde_lib

ALL_SDES = [
    pytest.param(sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), id="ve"),
    pytest.param(sde_lib.VPSDE(), id="vp"),
    pytest.param(sde_lib.SubVPSDE(), id="subvp"),
]


@pytest.mark.parametrize("sde", ALL_SDES)
def test_sample_ode_matches_mixture(sde):
  x, nfe = sampling.sample_ode(jax.random.PRNGKey(0), sampler_checks.isotropic_score_fn(sde), sde,
                               (sampler_checks.N_SAMPLES, 2), eps=sampler_checks.eps_for(sde))
  assert 20 < int(nfe) < 1000
  sampler_checks.assert_matches_mixture(x)


@pytest.mark.parametrize("method", sorted(sampling.SOLVERS))
def test_solver_nfe_counts_every_evaluation(method):
  """The reported NFE equals the number of vector-field calls executed, counted on the host."""
  calls = []

  def count(t):
    calls.append(float(t))
    return np.zeros((), np.float32)

  def field(t, y):
    tick = io_callback(count, jax.ShapeDtypeStruct((), jnp.float32), t, ordered=True)
    return jnp.stack([-2.0 * y[0] + jnp.sin(5 * t), y[0] - y[1] ** 3]) + tick

  solve = jax.jit(lambda y0: sampling.solve_adaptive(field, y0, 0.0, 2.0, rtol=1e-4, atol=1e-4,
                                                     method=method))
  y, nfe = solve(jnp.array([1.0, 0.5]))
  jax.block_until_ready(y)
  assert int(nfe) == len(calls) > 0


def _decode_error(sde, z, reference, rtol):
  x, _ = sampling.decode(sampler_checks.isotropic_score_fn(sde), sde, z, rtol=rtol, atol=rtol)
  return float(jnp.max(jnp.abs(x - reference)))


def test_ode_error_shrinks_with_tolerance(x64):
  sde = sde_lib.VPSDE()
  z = jax.random.normal(jax.random.PRNGKey(1), (32, 2))
  reference, _ = sampling.decode(sampler_checks.isotropic_score_fn(sde), sde, z, rtol=1e-11, atol=1e-11)
  errors = [_decode_error(sde, z, reference, tol) for tol in (1e-2, 1e-4, 1e-6)]
  assert errors[0] > 10 * errors[1] > 100 * errors[2], errors
  assert errors[2] < 1e-4


@pytest.mark.parametrize("sde", ALL_SDES)
def test_encode_decode_is_the_identity(sde, x64):
  score_fn = sampler_checks.isotropic_score_fn(sde)
  x = sampler_checks.mixture().sample(jax.random.PRNGKey(2), 32).astype(jnp.float64)
  eps = sampler_checks.eps_for(sde)
  z, _ = sampling.encode(score_fn, sde, x, rtol=1e-6, atol=1e-6, eps=eps)
  x_back, _ = sampling.decode(score_fn, sde, z, rtol=1e-6, atol=1e-6, eps=eps)
  np.testing.assert_allclose(x_back, x, atol=1e-4)
  # The latent is distributed as the prior: for the far-spread VE prior, z is much larger than x.
  assert float(jnp.std(z)) > (5.0 if isinstance(sde, sde_lib.VESDE) else 0.5)


def test_ode_samples_do_not_depend_on_the_batch():
  """Step-size control is per sample (vmap): adding samples to the batch changes nothing."""
  sde = sde_lib.VPSDE()
  score_fn = sampler_checks.isotropic_score_fn(sde)
  small, _ = sampling.sample_ode(jax.random.PRNGKey(5), score_fn, sde, (3, 2))
  large, _ = sampling.sample_ode(jax.random.PRNGKey(5), score_fn, sde, (9, 2))
  np.testing.assert_allclose(small, large[:3], rtol=1e-5, atol=1e-5)


def test_ode_sampler_compiles_once():
  traces = []
  base = sampler_checks.isotropic_score_fn(sde_lib.VPSDE())

  def score_fn(x, t):
    traces.append(1)
    return base(x, t)

  sde = sde_lib.VPSDE()
  sampling.sample_ode(jax.random.PRNGKey(0), score_fn, sde, (4, 2), rtol=1e-3, atol=1e-3)
  n = len(traces)
  sampling.sample_ode(jax.random.PRNGKey(1), score_fn, sde, (4, 2), rtol=1e-4, atol=1e-4, eps=1e-2)
  assert len(traces) == n > 0
