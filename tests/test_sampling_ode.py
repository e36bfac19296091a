"""Probability-flow ODE sampler and encode/decode with exact mixture scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sampler_checks
from score_sde.samplers import ode
from score_sde.diffusion import sde as sde_lib

ALL_SDES = [
    pytest.param(sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), id="ve"),
    pytest.param(sde_lib.VPSDE(), id="vp"),
    pytest.param(sde_lib.SubVPSDE(), id="subvp"),
]


@pytest.mark.slow
@pytest.mark.parametrize("sde", ALL_SDES)
def test_sample_ode_matches_mixture(sde):
  x, info = ode.sample_ode(jax.random.PRNGKey(0), sampler_checks.isotropic_score_fn(sde), sde,
                           (sampler_checks.N_SAMPLES, 2), rtol=1e-4, atol=1e-4,
                           eps=sampler_checks.eps_for(sde))
  assert 20 < int(info["nfe"]) < 1000
  sampler_checks.assert_matches_mixture(x)


@pytest.mark.slow
@pytest.mark.parametrize("sde", ALL_SDES)
def test_encode_decode_is_the_identity(sde, x64):
  score_fn = sampler_checks.isotropic_score_fn(sde)
  x = sampler_checks.mixture().sample(jax.random.PRNGKey(2), 32).astype(jnp.float64)
  eps = sampler_checks.eps_for(sde)
  z, _ = ode.encode(score_fn, sde, x, rtol=1e-6, atol=1e-6, eps=eps)
  x_back, _ = ode.decode(score_fn, sde, z, rtol=1e-6, atol=1e-6, eps=eps)
  np.testing.assert_allclose(x_back, x, atol=1e-4)
  # The latent is distributed as the prior: for the far-spread VE prior, z is much larger than x.
  assert float(jnp.std(z)) > (5.0 if isinstance(sde, sde_lib.VESDE) else 0.5)


@pytest.mark.slow
def test_ode_samples_do_not_depend_on_the_batch():
  """Step-size control is per sample (vmap): adding samples to the batch changes nothing."""
  sde = sde_lib.VPSDE()
  score_fn = sampler_checks.isotropic_score_fn(sde)
  small, _ = ode.sample_ode(jax.random.PRNGKey(5), score_fn, sde, (3, 2))
  large, _ = ode.sample_ode(jax.random.PRNGKey(5), score_fn, sde, (9, 2))
  np.testing.assert_allclose(small, large[:3], rtol=1e-5, atol=1e-5)


def test_ode_sampler_compiles_once():
  traces = []
  base = sampler_checks.isotropic_score_fn(sde_lib.VPSDE())

  def score_fn(x, t):
    traces.append(1)
    return base(x, t)

  sde = sde_lib.VPSDE()
  ode.sample_ode(jax.random.PRNGKey(0), score_fn, sde, (4, 2), rtol=1e-3, atol=1e-3)
  n = len(traces)
  ode.sample_ode(jax.random.PRNGKey(1), score_fn, sde, (4, 2), rtol=1e-4, atol=1e-4, eps=1e-2)
  assert len(traces) == n > 0
