"""The adaptive ODE solve: its function-evaluation count and its convergence with the tolerance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import sampler_checks
from score_sde.samplers import ode
from score_sde.diffusion import sde as sde_lib


@pytest.mark.parametrize("solver", sorted(ode.SOLVERS))
def test_solver_nfe_counts_every_evaluation(solver):
  """The reported NFE equals the number of vector-field calls executed, counted on the host."""
  calls = []

  def count(t):
    calls.append(float(t))
    return np.zeros((), np.float32)

  def field(t, y):
    tick = io_callback(count, jax.ShapeDtypeStruct((), jnp.float32), t, ordered=True)
    return jnp.stack([-2.0 * y[0] + jnp.sin(5 * t), y[0] - y[1] ** 3]) + tick

  solve = jax.jit(lambda y0: ode.solve_adaptive(field, y0, 0.0, 2.0, rtol=1e-4, atol=1e-4,
                                                solver=solver))
  y, nfe = solve(jnp.array([1.0, 0.5]))
  jax.block_until_ready(y)
  assert int(nfe) == len(calls) > 0


def _decode_error(sde, z, reference, rtol):
  x, _ = ode.decode(sampler_checks.isotropic_score_fn(sde), sde, z, rtol=rtol, atol=rtol)
  return float(jnp.max(jnp.abs(x - reference)))


@pytest.mark.slow
def test_ode_error_shrinks_with_tolerance(x64):
  sde = sde_lib.VPSDE()
  z = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  reference, _ = ode.decode(sampler_checks.isotropic_score_fn(sde), sde, z, rtol=1e-10, atol=1e-10)
  errors = [_decode_error(sde, z, reference, tol) for tol in (1e-2, 1e-4, 1e-6)]
  assert errors[0] > 10 * errors[1] > 100 * errors[2], errors
  assert errors[2] < 1e-4
