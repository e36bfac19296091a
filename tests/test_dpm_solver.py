"""DPM-Solver(++): convergence orders on a Gaussian's closed-form flow, grids, VE/sub-VP, SDE variant."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.diffusion import parametrization
from score_sde.samplers import common, dpm_solver
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.2], [0.2, 0.3]])
EPS = 1e-3


def _gaussian():
  return toy.gaussian(jnp.asarray(MU), jnp.asarray(SIGMA))


def _exact_flow(sde, x_T, t):
  """Closed-form probability-flow ODE map for Gaussian data: x_t = m μ + C_t^½ C_T^-½ (x_T - m_T μ),
  with C_t = m_t^2 Σ + std_t^2 I (all C_t commute, so the linear ODE integrates in closed form)."""
  evals, evecs = np.linalg.eigh(SIGMA)
  m_T, s_T = (float(v) for v in sde.marginal_params(jnp.asarray(sde.T)))
  m, s = (float(v) for v in sde.marginal_params(jnp.asarray(t)))
  a = evecs @ np.diag(np.sqrt((m**2 * evals + s**2) / (m_T**2 * evals + s_T**2))) @ evecs.T
  return m * MU + (np.asarray(x_T) - m_T * MU) @ a.T


def _errors(sde, steps, **hparams):
  key, shape = jax.random.PRNGKey(0), (16, 2)
  x_T = common.prior_sample(common.sample_keys(key, 16), sde, shape, jnp.float64)
  ref = _exact_flow(sde, x_T, EPS)
  out = []
  for n in steps:
    x, info = dpm_solver.sample_dpm_solver(key, _gaussian().score_fn(sde), sde, shape, num_steps=n,
                                           eps=EPS, lower_order_final=False, denoise=False,
                                           **hparams)
    per_step = hparams.get("order", 2) if hparams.get("variant") == "singlestep" else 1
    assert info["nfe"] == per_step * n
    out.append(np.abs(np.asarray(x) - ref).max())
  return np.array(out)


# (hparams, steps, slope range). Slopes measured from the log-log error at two step counts; third-order
# multistep is still super-convergent (slope ~3.7-4) at these step counts, so its bound is wider.
ORDER_CASES = [
    pytest.param(dict(order=2, variant="singlestep"), (20, 40), (1.8, 2.3), id="dpm++2S"),
    pytest.param(dict(order=2, variant="multistep"), (20, 40), (1.8, 2.3), id="dpm++2M"),
    pytest.param(dict(order=3, variant="singlestep", predict="noise"), (20, 40), (2.7, 3.6), id="dpm3"),
    pytest.param(dict(order=3, variant="multistep"), (20, 40), (2.7, 4.3), id="dpm++3M"),
]


@pytest.mark.parametrize("hparams, steps, bounds", ORDER_CASES)
def test_convergence_order_vp(hparams, steps, bounds, x64):
  errors = _errors(sde_lib.VPSDE(), steps, spacing="logsnr", **hparams)
  slope = np.log2(errors[0] / errors[1])
  assert bounds[0] < slope < bounds[1], (errors, slope)


def test_2m_on_ve_is_second_order(x64):
  """VE through its σ parametrisation (α = 1); sub-VP is covered by DDIM = DPM-Solver-1 in test_ddim."""
  errors = _errors(sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0), (20, 40), order=2,
                   variant="multistep", spacing="logsnr")
  slope = np.log2(errors[0] / errors[1])
  assert 1.8 < slope < 2.3, (errors, slope)


@pytest.mark.parametrize("spacing", ["time", "logsnr", "karras"])
def test_timesteps(spacing, x64):
  sde = sde_lib.VPSDE()
  t = np.asarray(dpm_solver.get_timesteps(sde, 10, spacing, EPS))
  assert t.shape == (11,) and t[0] == 1.0 and t[-1] == EPS and np.all(np.diff(t) < 0)
  lam = np.asarray(sde.log_snr(jnp.asarray(t)))
  if spacing == "logsnr":
    np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 10, rtol=1e-9)
  if spacing == "karras":
    s = np.exp(-lam) ** (1 / 7)
    np.testing.assert_allclose(np.diff(s), (s[-1] - s[0]) / 10, rtol=1e-8)


def test_sde_variant_matches_target_moments(x64):
  """SDE-DPM-Solver++(2M) on the reverse SDE: sample moments of a Gaussian within standard errors."""
  sde = sde_lib.VPSDE()
  x, info = dpm_solver.sample_dpm_solver(jax.random.PRNGKey(1), _gaussian().score_fn(sde), sde,
                                         (4000, 2), num_steps=50, order=2, stochastic=True,
                                         denoise=False)
  assert info["nfe"] == 50
  x = np.asarray(x)
  n = x.shape[0]
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * np.sqrt(np.diag(SIGMA) / n) + 0.01)
  se_cov = np.sqrt((np.outer(np.diag(SIGMA), np.diag(SIGMA)) + SIGMA**2) / n)
  np.testing.assert_array_less(np.abs(np.cov(x.T) - SIGMA), 5 * se_cov + 0.02)


def test_denoiser_input_equals_score_input(x64):
  """A Denoiser and the score it came from give the same samples."""
  sde = sde_lib.VPSDE()
  score_fn = _gaussian().score_fn(sde)
  denoiser = parametrization.Denoiser(fn=parametrization.as_denoiser(score_fn, sde))
  kw = dict(num_steps=8, order=3)
  a, _ = dpm_solver.sample_dpm_solver(jax.random.PRNGKey(2), score_fn, sde, (4, 2), **kw)
  b, _ = dpm_solver.sample_dpm_solver(jax.random.PRNGKey(2), denoiser, sde, (4, 2), **kw)
  np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_bad_input_is_rejected():
  sde = sde_lib.VPSDE()
  score_fn = lambda x, t: -x
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="order must be"):
    dpm_solver.sample_dpm_solver(key, score_fn, sde, (2, 2), order=4)
  with pytest.raises(ValueError, match="Unknown spacing"):
    dpm_solver.sample_dpm_solver(key, score_fn, sde, (2, 2), spacing="cosine")
  with pytest.raises(ValueError, match="single-step only at order 1"):
    dpm_solver.sample_dpm_solver(key, score_fn, sde, (2, 2), order=2, variant="singlestep",
                                 stochastic=True)
