"""The sampler protocol: every entry of ``SAMPLERS`` is ``sample(key, model, sde, shape, **options)
-> (x, info)`` and behaves the same way with respect to the batch, the model's form and guidance.

Small problems (2-D Gaussian data with exact scores, N = 20-50 levels, few steps, loose adaptive
tolerances): these tests check the protocol, not accuracy; the closed-form accuracy tests of each
sampler are in test_sampling*.py, test_ddim.py, test_dpm_solver.py, test_edm.py, test_adaptive_sde.py.
"""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.diffusion import parametrization
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy
from score_sde.samplers import SAMPLERS, guidance, pc

MU = np.array([0.5, -1.0])
SIGMA = np.array([[0.3, 0.1], [0.1, 0.2]])
# VP with N >= 50: the DDPM discretization of N = 20 has beta_{N-1} = beta_1 / N = 1.
SDES = {"vp": sde_lib.VPSDE(N=50), "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=20)}

# Options that make each sampler draw noise (where it can) and run in well under a second.
OPTIONS = {
    "pc": dict(corrector="ald"),  # the reference's langevin corrector couples the batch: see below
    "ald": dict(step_lr=1e-4, n_steps_each=2),
    "ode": dict(rtol=1e-3, atol=1e-3, solver="bosh3"),
    "ddim": dict(num_steps=5, eta=1.0),
    "dpm_solver": dict(num_steps=5, stochastic=True),
    "edm": dict(num_steps=5, s_churn=10.0),
    "adaptive_sde": dict(rtol=0.05, atol=0.01),
    "consistency": dict(num_steps=3),
    "flow": dict(num_steps=5, solver="heun"),
}
# ALD anneals the noise levels of a variance-exploding SDE only.
CASES = [(name, sde) for name in sorted(SAMPLERS) for sde in SDES
         if not (name == "ald" and sde == "vp")]
VP_OR_VE = {name: "ve" if name == "ald" else "vp" for name in SAMPLERS}
# The adaptive ODE's cases take 5-6 s each: the slow tier runs them.
TIERED_CASES = [pytest.param(name, sde, marks=pytest.mark.slow) if name == "ode" else (name, sde)
                for name, sde in CASES]


def _gaussian(mean=MU):
  return toy.gaussian(jnp.asarray(mean), jnp.asarray(SIGMA))


def _exact_denoiser(mean=MU):
  """D(x_σ, σ) = E[x_0 | x_0 + σ n] = μ + Σ (Σ + σ² I)^{-1} (x_σ - μ) for data N(μ, Σ)."""
  mu, cov = jnp.asarray(mean), jnp.asarray(SIGMA)

  def denoise(x_sigma, sigma):  # [B, 2], [B]
    gain = jnp.linalg.solve(cov[None] + sigma[:, None, None] ** 2 * jnp.eye(2), cov[None])  # [B, 2, 2]
    # Σ (Σ + σ² I)^{-1} = ((Σ + σ² I)^{-1} Σ)^T for symmetric Σ.
    return mu + jnp.einsum("bji,bj->bi", gain, x_sigma - mu)

  return parametrization.Denoiser(fn=denoise)


def _sample(name, sde_name, model, batch, seed=0):
  sde = SDES[sde_name]
  return SAMPLERS[name](jax.random.PRNGKey(seed), model, sde, (batch, 2), **OPTIONS[name])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_signature_is_the_protocol(name):
  params = list(inspect.signature(SAMPLERS[name]).parameters.values())
  assert [p.name for p in params[:4]] == ["key", "model", "sde", "shape"]
  assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:4])
  assert params[4:] and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[4:])
  options = {p.name: p.default for p in params[4:]}
  # Unified option names and defaults.
  assert not {"method", "n_steps", "reltol", "abstol"} & set(options), options
  if "eps" in options:
    assert options["eps"] is None
  if "denoise" in options:
    assert options["denoise"] is True
  assert name in ("pc", "ald") or "num_steps" in options or "rtol" in options


@pytest.mark.parametrize("name, sde_name", TIERED_CASES)
def test_samples_do_not_depend_on_the_batch_and_nfe_is_an_int(name, sde_name, x64):
  """Sample b draws from fold_in(key, b) alone: rows of a batch of 2 equal those of a batch of 5."""
  score_fn = _gaussian().score_fn(SDES[sde_name])
  small, info = _sample(name, sde_name, score_fn, 2)
  large, info_large = _sample(name, sde_name, score_fn, 5)
  assert type(info["nfe"]) is int and info["nfe"] > 0
  assert type(info_large["nfe"]) is int
  assert small.shape == (2, 2) and large.shape == (5, 2)
  assert np.all(np.isfinite(np.asarray(large)))
  np.testing.assert_allclose(small, large[:2], rtol=1e-10, atol=1e-10)
  assert not np.allclose(large[0], large[1])


def test_pc_langevin_corrector_couples_the_batch(x64):
  """The documented exception: the reference's Langevin step size averages norms over the batch."""
  sde = SDES["vp"]
  score_fn = _gaussian().score_fn(sde)
  small, _ = pc.sample_pc(jax.random.PRNGKey(0), score_fn, sde, (2, 2), corrector="langevin")
  large, _ = pc.sample_pc(jax.random.PRNGKey(0), score_fn, sde, (5, 2), corrector="langevin")
  assert not np.allclose(small, large[:2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, sde_name", TIERED_CASES)
def test_score_and_denoiser_give_the_same_samples(name, sde_name, x64):
  """The exact score and the exact denoiser of the same Gaussian are one model in two forms.

  Every sampler converts ``model`` once at entry; the two runs then differ only by float64
  rounding in the conversions (~1e-16 relative per evaluation, also in the bisection σ -> t of
  the EDM sampler), which a few dozen steps of these stable solvers amplify far less than to 1e-9.
  """
  sde = SDES[sde_name]
  from_score, info_score = _sample(name, sde_name, _gaussian().score_fn(sde), 3)
  from_denoiser, info_denoiser = _sample(name, sde_name, _exact_denoiser(), 3)
  np.testing.assert_allclose(from_denoiser, from_score, rtol=1e-9, atol=1e-9)
  assert info_denoiser["nfe"] == info_score["nfe"]


def _class_scores(sde):
  """Exact scores of two class Gaussians and of their equal mixture (the null class, label 2)."""
  means = (MU, -MU)
  classes = [_gaussian(m) for m in means]
  mixture = toy.GaussianMixture(weights=jnp.asarray([0.5, 0.5]), means=jnp.asarray(np.stack(means)),
                                covs=jnp.asarray(np.stack([SIGMA, SIGMA])))

  def labelled(x, t, y):
    s0, s1 = (c.marginal_score(sde, x, t) for c in classes)
    null = mixture.marginal_score(sde, x, t)
    return jnp.where((y == 0)[:, None], s0, jnp.where((y == 1)[:, None], s1, null))

  return labelled, classes, mixture


@pytest.mark.slow  # 5-10 s on 2 cores; the fast tier stays under 3 minutes
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_classifier_free_guidance_runs_through_every_sampler(name, x64):
  """A CFG score with per-sample labels y = (0, 1, 0, 1): row b equals the row of a run whose score
  is (1 + w) s_{y_b} - w s_null for every row, so the labels reach the right samples, also in the
  per-sample adaptive solvers that slice them out of the guided score."""
  sde_name = VP_OR_VE[name]
  sde = SDES[sde_name]
  labelled, classes, mixture = _class_scores(sde)
  w, labels = 1.5, jnp.asarray([0, 1, 0, 1])
  guided = guidance.classifier_free_guidance(labelled, labels, 2, w)
  x, info = _sample(name, sde_name, guided, 4)
  assert type(info["nfe"]) is int
  for c in (0, 1):
    def tilted(x, t, c=c):
      return (1.0 + w) * classes[c].marginal_score(sde, x, t) - w * mixture.marginal_score(sde, x, t)

    reference, _ = _sample(name, sde_name, tilted, 4)
    np.testing.assert_allclose(x[c::2], reference[c::2], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["ode", "adaptive_sde"])
def test_adaptive_samplers_run_inside_the_callers_jit(name, x64):
  """Inside a caller's jit an adaptive count is a traced scalar; it equals the eager int."""
  sde_name = VP_OR_VE[name]
  score_fn = _gaussian().score_fn(SDES[sde_name])
  eager, info = _sample(name, sde_name, score_fn, 2)
  jitted, jitted_info = jax.jit(lambda: _sample(name, sde_name, score_fn, 2))()
  np.testing.assert_allclose(jitted, eager, rtol=1e-10, atol=1e-10)
  assert int(jitted_info["nfe"]) == info["nfe"]


def test_sde_step_rules(x64):
  """The per-SDE rules of the PC steps are SDE methods (Song et al. 2021, Appendix G; the reference implementation)."""
  t = jnp.asarray([0.0, 0.37, 1.0])
  i = np.asarray([0, 18, 49])  # int(t (N - 1)) for N = 50
  vp, subvp = sde_lib.VPSDE(N=50), sde_lib.SubVPSDE(N=50)
  ve = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=50)
  betas = np.linspace(0.1 / 50, 20.0 / 50, 50)
  np.testing.assert_allclose(ve.langevin_step_scale(t), 1.0)
  np.testing.assert_allclose(vp.langevin_step_scale(t), 1.0 - betas[i], rtol=1e-12)
  np.testing.assert_allclose(subvp.langevin_step_scale(t), 1.0 - betas[i], rtol=1e-12)
  x, score = jnp.ones((3, 2)), jnp.full((3, 2), -0.5)
  x_mean, std = vp.ancestral_step(x, t, score)
  np.testing.assert_allclose(x_mean, ((1.0 - 0.5 * betas[i]) / np.sqrt(1.0 - betas[i]))[:, None]
                             * np.ones((3, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, np.sqrt(betas[i]), rtol=1e-12)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(5.0), 50))
  prev = np.where(i == 0, 0.0, sigmas[np.maximum(i - 1, 0)])
  x_mean, std = ve.ancestral_step(x, t, score)
  np.testing.assert_allclose(x_mean, (1.0 - 0.5 * (sigmas[i]**2 - prev**2))[:, None] * np.ones((3, 2)),
                             rtol=1e-12)
  np.testing.assert_allclose(std, np.sqrt(prev**2 * (sigmas[i]**2 - prev**2) / sigmas[i]**2),
                             rtol=1e-12)
  with pytest.raises(ValueError, match="ancestral_sampling is defined only"):
    subvp.ancestral_step(x, t, score)


def test_bad_model_is_rejected():
  with pytest.raises(TypeError, match="score_fn"):
    SAMPLERS["ddim"](jax.random.PRNGKey(0), None, SDES["vp"], (2, 2))
