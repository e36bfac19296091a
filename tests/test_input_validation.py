"""Bad input to the library API gets a clear error naming the argument, never a silent wrong result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy
from score_sde.samplers import SAMPLERS, likelihood

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("method", ["pc", "ode", "ddim", "dpm_solver", "edm", "adaptive_sde"])
@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.5])
def test_eps_outside_zero_to_T_is_refused(method, eps):
  sde = sde_lib.VPSDE(N=50)
  with pytest.raises(ValueError, match=r"eps must be in \(0, T = 1.0\]"):
    SAMPLERS[method](KEY, lambda x, t: -x, sde, (2, 3), eps=eps)


@pytest.mark.parametrize("rtol, atol, message", [(-1e-3, 1e-5, "rtol must be >= 0"),
                                                 (1e-5, -1.0, "atol must be >= 0"),
                                                 (0.0, 0.0, "both 0")])
def test_negative_tolerances_are_refused(rtol, atol, message):
  sde = sde_lib.VPSDE(N=50)
  with pytest.raises(ValueError, match=message):
    SAMPLERS["ode"](KEY, lambda x, t: -x, sde, (2, 3), rtol=rtol, atol=atol)
  with pytest.raises(ValueError, match=message):
    likelihood.log_likelihood(KEY, lambda x, t: -x, sde, jnp.zeros((2, 3)), rtol=rtol, atol=atol)


@pytest.mark.parametrize("predictor, corrector", [("reverse_diffusion", "none"),
                                                  ("ancestral_sampling", "none"),
                                                  ("euler_maruyama", "langevin")])
def test_vp_with_too_few_levels_is_refused_where_it_would_give_nan(predictor, corrector):
  """N <= beta_max makes beta_N >= 1: sqrt(1 - beta) of the chain is NaN for every sample."""
  sde = sde_lib.VPSDE(N=20)
  with pytest.raises(ValueError, match=r"beta_N = beta_max / N = 1 >= 1"):
    SAMPLERS["pc"](KEY, lambda x, t: -x, sde, (2, 3), predictor=predictor, corrector=corrector)
  # Euler-Maruyama alone does not use the discrete chain and stays valid.
  x, _ = SAMPLERS["pc"](KEY, lambda x, t: -x, sde, (2, 3), predictor="euler_maruyama",
                        corrector="none")
  assert np.all(np.isfinite(x))


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_a_broadcasting_score_output_is_refused(method):
  """A [1, ...] output would broadcast against the batch and give garbage (std 249 in the report)."""
  sde = sde_lib.VESDE(N=10) if method == "ald" else sde_lib.VPSDE(N=50)
  options = {"ald": dict(step_lr=1e-5, n_steps_each=1), "ode": dict(rtol=1e-2, atol=1e-2),
             "adaptive_sde": dict(rtol=0.05, atol=0.05)}.get(method, {})
  broadcasting = lambda x, t: -x[:1]
  with pytest.raises(ValueError, match=r"score function returned shape \(1, 3\) for an input of "
                                       r"shape \((2|1), 3\)"):
    SAMPLERS[method](KEY, broadcasting, sde, (2, 3), **options)


@pytest.mark.slow  # 5-10 s on 2 cores; the fast tier stays under 3 minutes
def test_nan_input_gets_nan_log_likelihood_and_the_rest_of_the_batch_is_exact(x64):
  sde = sde_lib.VPSDE()
  data = toy.gaussian(jnp.zeros(2), jnp.eye(2))
  x = jnp.asarray([[0.3, -0.2], [jnp.nan, 0.0], [1.0, 0.5]])
  logp, _, _ = likelihood.log_likelihood(KEY, data.score_fn(sde), sde, x, divergence="exact",
                                         eps=1e-5)
  assert np.isnan(logp[1])
  # The finite rows keep the exact density (exact divergence; solver tolerance 1e-5).
  expected = data.marginal_log_prob(sde, x[jnp.asarray([0, 2])], jnp.full((2,), 1e-5))
  np.testing.assert_allclose(np.asarray(logp)[[0, 2]], expected, atol=2e-3)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_refuses_a_shape_without_a_batch_dimension(name):
  """A shape (D,) would make every sample share one row: refused at entry, naming the argument."""
  ve = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=10)
  options = {"step_lr": 1e-5, "n_steps_each": 1} if name == "ald" else {}
  with pytest.raises(ValueError, match=r"shape must be \(batch, \*sample_shape\).*got \(16,\)"):
    SAMPLERS[name](jax.random.PRNGKey(0), lambda x, t: -x, ve, (16,), **options)

