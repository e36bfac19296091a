"""DDIM: η = 0 converges to the probability-flow ODE, inversion round trip, first order, η = 1 moments."""
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.samplers import common, ddim, dpm_solver
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.2], [0.2, 0.3]])


def _mixture():
  return toy.isotropic_mixture([0.3, 0.7], jnp.array([[1.5, 0.0], [-1.0, 1.0]]), std=0.4)


def _pf_ode_reference(score_fn, sde, x_T, eps):
  """x(eps) from x(T) along the probability-flow ODE, solved tightly with diffrax (Tsit5, 1e-10)."""
  reverse = sde.reverse(score_fn, probability_flow=True)
  drift = lambda t, y, args: reverse.sde(y, jnp.full((y.shape[0],), t))[0]
  sol = diffrax.diffeqsolve(diffrax.ODETerm(drift), diffrax.Tsit5(), t0=sde.T, t1=eps, dt0=None,
                            y0=x_T, stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
                            max_steps=100_000)
  return np.asarray(sol.ys[0])


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0)],
                         ids=["vp", "ve"])
def test_eta0_converges_to_probability_flow_ode(sde, x64):
  """Same x_T: the DDIM error against the tightly solved PF ODE halves with doubled steps (order 1)."""
  score_fn = _mixture().score_fn(sde)
  key, shape, eps = jax.random.PRNGKey(0), (8, 2), 1e-3
  x_T = common.prior_sample(common.sample_keys(key, 8), sde, shape, jnp.float64)
  ref = _pf_ode_reference(score_fn, sde, x_T, eps)
  errors = []
  for n in (100, 200, 400):
    x, info = ddim.sample_ddim(key, score_fn, sde, shape, num_steps=n, eps=eps, denoise=False)
    assert info["nfe"] == n
    errors.append(np.abs(np.asarray(x) - ref).mean())
  slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
  # First order, approached from above (the pre-asymptotic slope on this mixture is up to ~1.4).
  assert np.all((slopes > 0.8) & (slopes < 1.5)), (errors, slopes)
  assert errors[-1] < 0.05, errors


def test_inversion_then_generation_returns_input(x64):
  sde = sde_lib.VPSDE()
  mixture = _mixture()
  score_fn = mixture.score_fn(sde)
  x0 = mixture.sample(jax.random.PRNGKey(1), 8)
  errors = []
  for n in (200, 400):
    grid = dpm_solver.get_timesteps(sde, n, "logsnr", 1e-3)
    x_T, info = ddim.ddim_invert(score_fn, sde, x0, timesteps=grid[::-1])
    assert info["nfe"] == n
    x_back, _ = ddim.ddim_ode(score_fn, sde, x_T, grid)  # η = 0 generation from x_T
    errors.append(np.abs(np.asarray(x_back) - np.asarray(x0)).max())
  # Both directions are first order with opposite leading errors: the round trip is O(1/N).
  assert errors[1] < 0.6 * errors[0], errors
  assert errors[1] < 0.03, errors


def test_eta0_equals_first_order_dpm_solver(x64):
  """Deterministic DDIM is DPM-Solver-1 (Lu et al. 2022, Sec. 4.1) on the same grid."""
  sde = sde_lib.SubVPSDE()
  score_fn = _mixture().score_fn(sde)
  key, shape = jax.random.PRNGKey(2), (6, 2)
  x_ddim, _ = ddim.sample_ddim(key, score_fn, sde, shape, num_steps=12)
  x_dpm, _ = dpm_solver.sample_dpm_solver(key, score_fn, sde, shape, order=1, spacing="time",
                                          num_steps=12)
  np.testing.assert_allclose(x_ddim, x_dpm, rtol=1e-10, atol=1e-10)


def test_eta1_matches_target_moments(x64):
  sde = sde_lib.VPSDE()
  gauss = toy.gaussian(jnp.asarray(MU), jnp.asarray(SIGMA))
  grid = ddim.ddpm_timesteps(sde, 100, kind="quadratic")
  x, info = ddim.sample_ddim(jax.random.PRNGKey(3), gauss.score_fn(sde), sde, (4000, 2), eta=1.0,
                             timesteps=grid, denoise=True)
  assert info["nfe"] == grid.shape[0]
  x = np.asarray(x)
  n = x.shape[0]
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * np.sqrt(np.diag(SIGMA) / n) + 0.01)
  se_cov = np.sqrt((np.outer(np.diag(SIGMA), np.diag(SIGMA)) + SIGMA**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - SIGMA), 5 * se_cov + 0.02)


def test_ddpm_timesteps_and_bad_input():
  sde = sde_lib.VPSDE()
  for kind in ("uniform", "quadratic"):
    grid = np.asarray(ddim.ddpm_timesteps(sde, 50, kind))
    assert np.all(np.diff(grid) < 0) and grid[0] <= 1.0 and grid[-1] > 0
    np.testing.assert_allclose(grid * 999, np.round(grid * 999), atol=1e-9)  # on the discrete steps
  with pytest.raises(ValueError, match="strictly decreasing"):
    ddim.sample_ddim(jax.random.PRNGKey(0), lambda x, t: -x, sde, (2, 2), timesteps=jnp.array([0.5, 0.9]))
  with pytest.raises(ValueError, match="eta must be in"):
    ddim.sample_ddim(jax.random.PRNGKey(0), lambda x, t: -x, sde, (2, 2), eta=1.5)
