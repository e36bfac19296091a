"""The adaptive ODE solve: its function-evaluation count, its step-size rule and its convergence with
the tolerance."""
import diffrax
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


def _adapt(err, rejected_last, h=0.1, error_order=5):
  """One call of HairerController.adapt_step_size on a scalar whose scaled error is ``err``."""
  controller = ode.HairerController(rtol=0.0, atol=1e-3)
  y = jnp.zeros(())
  accept, t_start, t_next, _, rejected, _ = controller.adapt_step_size(
      1.0, 1.0 + h, y, y, None, jnp.asarray(err * 1e-3), error_order, jnp.asarray(rejected_last))
  return bool(accept), float(t_start), float(t_next - t_start) / h, bool(rejected)


@pytest.mark.parametrize("err, rejected_last, accept, factor", [
    (0.8, False, True, 0.9 * 0.8 ** -0.2),   # accepted, yet the next step shrinks
    (0.01, False, True, 0.9 * 0.01 ** -0.2),  # grows by safety * err^(-1/5)
    (1e-9, False, True, 10.0),                # growth capped at factormax
    (0.01, True, True, 1.0),                  # no growth right after a rejection
    (0.8, True, True, 0.9 * 0.8 ** -0.2),     # ... but it may shrink
    (2.0, False, False, 0.9 * 2.0 ** -0.2),   # rejected: retried shorter from the same start
    (1e6, False, False, 0.2),                 # shrink capped at factormin
    (float("nan"), False, False, 0.2),        # a non-finite attempt is rejected
])
def test_hairer_controller_step_rule(err, rejected_last, accept, factor):
  """Hairer, Norsett & Wanner eq. (4.13) with scipy RK45's limits, for Dopri5 (error order 5)."""
  accepted, t_start, got_factor, rejected = _adapt(err, rejected_last)
  assert accepted == accept and rejected == (not accept)
  assert t_start == pytest.approx(1.1 if accept else 1.0)
  np.testing.assert_allclose(got_factor, factor, rtol=1e-5)


def test_hairer_controller_rejects_fewer_steps_than_pid_on_a_stiff_problem():
  """y' = -500 (y - cos t): Dopri5's step is held by its stability limit, where an error that
  creeps up is met by shrinking steps, not by rejections. The answer is the closed form's."""
  lam = 500.0
  term = diffrax.ODETerm(lambda t, y, args: -lam * (y - jnp.cos(t)))

  def solve(controller):
    sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), 0.0, 10.0, None, jnp.array([1.0, 2.0]),
                              stepsize_controller=controller, max_steps=10000)
    return sol.ys[0], int(sol.stats["num_steps"]), int(sol.stats["num_rejected_steps"])

  y_pid, steps_pid, rejected_pid = solve(diffrax.PIDController(rtol=1e-5, atol=1e-5))
  y, steps, rejected = solve(ode.HairerController(rtol=1e-5, atol=1e-5))
  exact = (lam ** 2 * np.cos(10.0) + lam * np.sin(10.0)) / (lam ** 2 + 1)  # the transient is gone
  np.testing.assert_allclose(y, exact, atol=1e-5)
  np.testing.assert_allclose(y_pid, exact, atol=1e-5)
  assert rejected < rejected_pid / 4 and steps < steps_pid, (steps, rejected, steps_pid, rejected_pid)
