"""Bits per dimension of 8-bit data against closed forms for Gaussian data."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.experiment import evaluation
from score_sde.samplers import likelihood
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

EPS = 1e-5


def _gaussian_setup():
  """Gaussian data in model space [-1, 1] with mean 0 (8-bit images are centred on 0.5)."""
  cov = jnp.array([[0.10, 0.03, 0.0], [0.03, 0.20, -0.02], [0.0, -0.02, 0.15]])
  model = toy.gaussian(jnp.zeros(3), cov)
  # beta_1 = 40 makes p_T equal to the N(0, I) prior to within e^-10: no prior-mismatch term.
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=40.0)
  y = jnp.clip(model.sample(jax.random.PRNGKey(3), 8), -1.0, 1.0)
  x = jnp.round((y + 1) / 2 * 255) / 255  # 8-bit data in [0, 1]
  return model, sde, x


def _gaussian_nll_nats(sde, cov, y, extra_var=0.0):
  """E[-log N(y + d; 0, C)] with C = m^2 cov + std^2 I at eps and d of covariance extra_var I."""
  m, std = (float(v[0]) for v in sde.marginal_params(jnp.array([EPS])))
  c = m**2 * np.asarray(cov) + std**2 * np.eye(3)
  quad = np.einsum("bi,ij,bj->b", y, np.linalg.inv(c), y)
  return 0.5 * (3 * math.log(2 * math.pi) + np.linalg.slogdet(c)[1] + quad
                + extra_var * np.trace(np.linalg.inv(c)))


@pytest.mark.slow
@pytest.mark.parametrize("centered", [True, False])
def test_bits_per_dim_matches_closed_form_without_dequantization(centered, x64):
  model, sde, x = _gaussian_setup()
  scale = 2.0 if centered else 1.0
  y = np.asarray(scale * x - (scale - 1))  # model space
  # Uncentered data live in [0, 1]: shift the model to mean 0.5 there (same shape).
  shift = 0.0 if centered else 0.5
  model = toy.gaussian(jnp.full((3,), shift), model.covs[0] / scale**2)
  if not centered:
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=60.0)  # p_T = prior to within e^-15 |mean|
  bpd, nfe = likelihood.bits_per_dim(jax.random.PRNGKey(0), model.score_fn(sde), sde, x,
                                     centered=centered, dequantize=False, divergence="exact")
  m = float(sde.marginal_params(jnp.array([EPS]))[0][0])
  nll = _gaussian_nll_nats(sde, model.covs[0], y - m * shift)
  expected = nll / (3 * math.log(2)) + 8 - math.log2(scale)  # offset 7 centered, 8 otherwise
  np.testing.assert_allclose(bpd, expected, atol=2e-3)
  assert int(nfe) > 0


@pytest.mark.slow  # ~8 s: an adaptive solve in float64
def test_bits_per_dim_with_dequantization_matches_expected_value(x64):
  model, sde, x = _gaussian_setup()
  n_repeats = 4
  bpd, _ = likelihood.bits_per_dim(jax.random.PRNGKey(0), model.score_fn(sde), sde, x, centered=True,
                                   dequantize=True, n_repeats=n_repeats, divergence="exact")
  # y = 2 (255 x + u) / 256 - 1 has mean y_bar (u = 1/2) and covariance (2/256)^2 / 12 I.
  y_bar = np.asarray(2 * (255 * x + 0.5) / 256 - 1)
  du_var = (2 / 256) ** 2 / 12
  nll = _gaussian_nll_nats(sde, model.covs[0], y_bar, extra_var=du_var)
  expected = nll / (3 * math.log(2)) + 7
  # Per-point Monte-Carlo SE over the repeats, from the linear term g.d of the quadratic form.
  m, std = (float(v[0]) for v in sde.marginal_params(jnp.array([EPS])))
  c = m**2 * np.asarray(model.covs[0]) + std**2 * np.eye(3)
  g = y_bar @ np.linalg.inv(c)
  se = np.sqrt(du_var * np.sum(g**2, -1) / n_repeats) / (3 * math.log(2))
  assert np.all(np.abs(np.asarray(bpd) - expected) < 4 * se + 2e-3), (bpd, expected, se)


@pytest.mark.slow
def test_bits_per_dim_batch_step_control_matches_closed_form(x64):
  """step_control='batch' (one error norm over the batch) gives the closed form as 'per_sample'."""
  model, sde, x = _gaussian_setup()
  y = np.asarray(2 * x - 1)
  expected = _gaussian_nll_nats(sde, model.covs[0], y) / (3 * math.log(2)) + 7
  for control in ("per_sample", "batch"):
    bpd, nfe = likelihood.bits_per_dim(jax.random.PRNGKey(0), model.score_fn(sde), sde, x,
                                       centered=True, dequantize=False, divergence="exact",
                                       step_control=control)
    np.testing.assert_allclose(bpd, expected, atol=2e-3, err_msg=control)
    assert np.ndim(nfe) == 0 and int(nfe) > 0


@pytest.mark.parametrize("n, batch, multiple", [(297, 128, 1), (297, 128, 2), (256, 128, 4), (5, 8, 1),
                                                (1000, 96, 8), (41, 128, 8)])
def test_balanced_batch_size_keeps_the_batch_count_and_cuts_the_padding(n, batch, multiple):
  b = evaluation.balanced_batch_size(n, batch, multiple)
  num_batches = -(-n // batch)
  assert b % multiple == 0 and b <= -(-batch // multiple) * multiple
  assert -(-n // b) == num_batches  # as many batches (compiled solves) as before
  assert num_batches * b - n < num_batches * multiple  # padding under `multiple` per batch
  assert evaluation.balanced_batch_size(297, 128, 1) == 99
