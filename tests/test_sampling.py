"""Predictor-corrector and annealed-Langevin samplers: errors, randomness, convergence, compilation.

Distribution checks of every predictor/corrector combination live in test_sampling_pc_{ve,vp,subvp}.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

import sampler_checks
from score_sde.samplers import ald, ode, pc
from score_sde.diffusion import sde as sde_lib

VE = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=200)
VP = sde_lib.VPSDE(N=200)
SUBVP = sde_lib.SubVPSDE(N=200)


@pytest.mark.parametrize("sde", [VE, VP, SUBVP], ids=["ve", "vp", "subvp"])
def test_isotropic_score_equals_toy_mixture_score(sde):
  mix = sampler_checks.mixture()
  x = 3 * jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  t = jnp.linspace(1e-3, 1.0, 16)
  expected = jax.jit(mix.marginal_score)(sde, x, t)
  np.testing.assert_allclose(sampler_checks.isotropic_score_fn(sde)(x, t), expected, rtol=1e-4, atol=1e-4)


def _zero_score(x, t):
  return jnp.zeros_like(x)


@pytest.mark.parametrize("kwargs,sde,message", [
    (dict(predictor="heun"), VP, "Unknown predictor"),
    (dict(corrector="hmc"), VP, "Unknown corrector"),
    (dict(predictor="ancestral_sampling"), SUBVP, "ancestral_sampling is defined only"),
    (dict(predictor="ancestral_sampling", probability_flow=True), VP, "no probability-flow"),
    (dict(predictor="none", corrector="none"), VP, "nothing to do"),
    (dict(n_steps_each=0), VP, "n_steps_each"),
])
def test_sample_pc_rejects_bad_options(kwargs, sde, message):
  with pytest.raises(ValueError, match=message):
    pc.sample_pc(jax.random.PRNGKey(0), _zero_score, sde, (4, 2), **kwargs)


def test_bad_shapes_and_sdes_are_rejected():
  with pytest.raises(ValueError, match="shape must be"):
    pc.sample_pc(jax.random.PRNGKey(0), _zero_score, VP, (4,))
  with pytest.raises(ValueError, match="variance-exploding"):
    ald.sample_ald(jax.random.PRNGKey(0), _zero_score, VP, (4, 2), step_lr=1e-5, n_steps_each=1)
  with pytest.raises(ValueError, match="Unknown ODE solver"):
    ode.sample_ode(jax.random.PRNGKey(0), _zero_score, VP, (4, 2), solver="rk4")
  with pytest.raises(TypeError, match="callable"):
    pc.sample_pc(jax.random.PRNGKey(0), None, VP, (4, 2))


def test_sample_ald_matches_mixture():
  # a_i / sigma_i^2 = step_lr / sigma_min^2 = 0.2: each step moves ~0.45 of the current noise
  # scale; 5 steps per level let the chain track p_sigma as sigma shrinks by 3.5% per level (with
  # step_lr 1e-5 and 3 steps the lag leaves the variance 6 SE too large).
  x, info = ald.sample_ald(jax.random.PRNGKey(0), sampler_checks.isotropic_score_fn(VE), VE,
                               (sampler_checks.N_SAMPLES, 2), step_lr=2e-5, n_steps_each=5)
  assert info["nfe"] == VE.N * 5 + 1
  sampler_checks.assert_matches_mixture(x)


def test_per_sample_results_do_not_depend_on_the_batch():
  """Sample b uses only fold_in(key, b): a smaller batch reproduces the first samples exactly."""
  score_fn = sampler_checks.isotropic_score_fn(VP)
  kw = dict(predictor="euler_maruyama", corrector="ald")
  small, _ = pc.sample_pc(jax.random.PRNGKey(3), score_fn, VP, (3, 2), **kw)
  large, _ = pc.sample_pc(jax.random.PRNGKey(3), score_fn, VP, (7, 2), **kw)
  np.testing.assert_allclose(small, large[:3], rtol=1e-5, atol=1e-5)
  assert not np.allclose(large[0], large[1])
  small, _ = ald.sample_ald(jax.random.PRNGKey(4), sampler_checks.isotropic_score_fn(VE), VE,
                                 (3, 2), step_lr=1e-5, n_steps_each=1)
  large, _ = ald.sample_ald(jax.random.PRNGKey(4), sampler_checks.isotropic_score_fn(VE), VE,
                                 (7, 2), step_lr=1e-5, n_steps_each=1)
  np.testing.assert_allclose(small, large[:3], rtol=1e-5, atol=1e-5)


def test_euler_maruyama_error_shrinks_with_n(x64):
  """Weak error of Euler-Maruyama on 1-D Gaussian data N(1, 0.5^2) under the VP SDE.

  The exact score is linear, so the only errors are O(1/N) discretisation and Monte-Carlo noise.
  With 40000 samples the standard error of the sample variance (0.25) is 0.25 sqrt(2/40000) =
  0.0018 and of the mean 0.0025; the N = 8 error is ~20x that and must shrink with N.
  """
  mean, std, n = 1.0, 0.5, 40_000

  def errors(num_steps):
    sde = sde_lib.VPSDE(N=num_steps)

    def score_fn(x, t):
      m, s = sde.marginal_params(t)
      return -(x - m[:, None] * mean) / (m**2 * std**2 + s**2)[:, None]

    x, _ = pc.sample_pc(jax.random.PRNGKey(0), score_fn, sde, (n, 1),
                              predictor="euler_maruyama", corrector="none")
    x = np.asarray(x)[:, 0]
    return abs(x.mean() - mean) + abs(x.var() - std**2)

  e8, e32, e128 = errors(8), errors(32), errors(128)
  se = 0.0025 + 0.0018
  assert e8 > e32 + 3 * se and e32 > e128, (e8, e32, e128)
  assert e128 < 4 * se


class _Counter:
  """A score function that counts how often JAX traces it (a Python side effect at trace time)."""

  def __init__(self, sde):
    self.traces = 0
    self.score = sampler_checks.isotropic_score_fn(sde)

  def __call__(self, x, t):
    self.traces += 1
    return self.score(x, t)


def test_pc_sampler_compiles_once_per_shape():
  counter = _Counter(VP)
  pc.sample_pc(jax.random.PRNGKey(0), counter, VP, (8, 2))
  traces = counter.traces
  assert traces > 0
  pc.sample_pc(jax.random.PRNGKey(1), counter, VP, (8, 2), snr=0.2, eps=2e-3)
  pc.sample_pc(jax.random.PRNGKey(2), counter, sde_lib.VPSDE(beta_max=15.0, N=200), (8, 2))
  assert counter.traces == traces, "new keys / float hyper-parameters / SDE values must not recompile"
  pc.sample_pc(jax.random.PRNGKey(0), counter, VP, (16, 2))
  assert counter.traces > traces, "a new shape compiles again"


def _net_score(params, x, t):
  """A 'network' whose parameters arrive as a pytree: score = -(x - w) * b(t)."""
  return -(x - params["w"]) * params["scale"] * (1 + t[:, None])


def test_new_params_do_not_recompile():
  """The experiment loop calls samplers with new parameters every time: that must not recompile."""
  traces = []
  score = lambda params, x, t: (traces.append(1), _net_score(params, x, t))[1]
  params = {"w": jnp.ones((2,)), "scale": jnp.asarray(1.0)}
  # Parameters as pytree leaves of a Partial: traced arguments of the compiled sampler.
  x1, _ = pc.sample_pc(jax.random.PRNGKey(0), Partial(score, params), VP, (4, 2))
  n = len(traces)
  params2 = {"w": -jnp.ones((2,)), "scale": jnp.asarray(2.0)}
  x2, _ = pc.sample_pc(jax.random.PRNGKey(0), Partial(score, params2), VP, (4, 2))
  assert len(traces) == n
  assert not np.allclose(x1, x2), "the new parameters were used"
  # A closure over params inside the caller's own jit compiles once as well.
  sample = jax.jit(lambda key, p: pc.sample_pc(key, lambda x, t: score(p, x, t), VP, (4, 2))[0])
  y1 = sample(jax.random.PRNGKey(0), params)
  n = len(traces)
  y2 = sample(jax.random.PRNGKey(0), params2)
  assert len(traces) == n
  np.testing.assert_allclose(y1, x1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y2, x2, rtol=1e-5, atol=1e-5)
