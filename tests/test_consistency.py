"""Consistency models: the parametrisation, the curricula, the CD / CT / iCT losses and the sampler,
against the exact consistency function of Gaussian data.

For x_0 ~ N(μ, s² I) the probability-flow ODE in σ moves x along x_σ - μ ∝ √(s² + σ²), so the exact
consistency function is f*(x, σ) = μ + (x - μ) √(s² + σ_min²)/√(s² + σ²) and the exact denoiser
D(x, σ) = μ + s²/(s² + σ²) (x - μ). ``_exact_model_fn`` is the network F whose consistency function
is f* (the preconditioning inverted), with (μ, s) as its parameters so that gradients can be taken.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.diffusion import consistency as cm
from score_sde.diffusion import losses, parametrization
from score_sde.diffusion import sde as sde_lib
from score_sde.samplers import edm
from score_sde.samplers.consistency import sample_consistency

MU, S, SIGMA_MIN, SIGMA_DATA = 0.3, 0.7, 0.002, 0.5
SDE = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)
TRUE = {"mu": 0.3, "s": 0.7}


def _bb(a, x):
  return a.reshape(a.shape + (1,) * (x.ndim - 1))


def _exact_model_fn(params, x_in, c_noise, train=False, rng=None):
  """F = (f* - c_skip x)/c_out at σ = exp(4 c_noise), x = x_in / c_in; 0 where c_out = 0 (σ_min)."""
  sigma = jnp.exp(4.0 * c_noise)
  c_skip, c_out, c_in, _ = cm.consistency_preconditioning(sigma, SIGMA_DATA, SIGMA_MIN)
  x = x_in / _bb(c_in, x_in)
  mu, s = params["mu"], params["s"]
  f_star = mu + (x - mu) * _bb(jnp.sqrt(s**2 + SIGMA_MIN**2) / jnp.sqrt(s**2 + sigma**2), x)
  boundary = _bb(c_out == 0, x)
  safe_c_out = jnp.where(boundary, 1.0, _bb(c_out, x))
  return jnp.where(boundary, 0.0, (f_star - _bb(c_skip, x) * x) / safe_c_out)


def _exact_teacher():
  return parametrization.Denoiser(
      fn=lambda x, sigma: MU + _bb(S**2 / (S**2 + sigma**2), x) * (x - MU))


def _params():
  return {k: jnp.asarray(v) for k, v in TRUE.items()}


def _data(n, dim=1, seed=1):
  return MU + S * jax.random.normal(jax.random.PRNGKey(seed), (n, dim))


def _mlp_fn(width=16):
  """A small random network model_fn(params, x, labels, train=, rng=) and its params."""
  import flax.linen as nn

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, c_noise):
      h = jnp.concatenate([x, c_noise[:, None]], axis=-1)
      for _ in range(2):
        h = nn.silu(nn.Dense(width)(h))
      return nn.Dense(x.shape[-1])(h)

  net = MLP()
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
  return lambda p, x, labels, train=False, rng=None: net.apply(p, x, labels), params


# --- parametrisation ------------------------------------------------------------------------

def test_preconditioning_closed_forms(x64):
  sigma = np.array([0.002, 0.01, 0.5, 3.0, 80.0])
  got = cm.consistency_preconditioning(jnp.asarray(sigma))
  d = sigma - 0.002
  want = (0.25 / (d**2 + 0.25), d * 0.5 / np.sqrt(sigma**2 + 0.25), 1.0 / np.sqrt(sigma**2 + 0.25),
          0.25 * np.log(sigma))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-14, atol=1e-300)


def test_boundary_condition_holds_for_any_network():
  """c_skip(σ_min) = 1 and c_out(σ_min) = 0 exactly, so f(x, σ_min) = x bit for bit (float32)."""
  model_fn, params = _mlp_fn()
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (5, 2))
  f = cm.consistency_function(model_fn)
  np.testing.assert_array_equal(f(params, x, jnp.full((5,), 0.002)), x)
  model = cm.get_consistency_model(model_fn, params)
  assert isinstance(model, parametrization.Denoiser)
  np.testing.assert_array_equal(model(x, jnp.full((5,), 0.002)), x)
  assert not np.allclose(model(x, jnp.full((5,), 1.0)), x)


def test_class_labels_reach_the_network_only_when_given():
  seen = []

  def model_fn(params, x, labels, train=False, rng=None, **kw):
    seen.append(kw)
    return x

  f = cm.consistency_function(model_fn)
  f(None, jnp.ones((2, 1)), jnp.ones((2,)))
  cm.get_consistency_model(model_fn, None, class_labels=jnp.asarray([1, 0]))(jnp.ones((2, 1)),
                                                                            jnp.ones((2,)))
  assert seen[0] == {} and list(seen[1]) == ["class_labels"]


# --- curricula -------------------------------------------------------------------------------

def test_karras_levels_are_edm_sigmas_reversed_and_padded(x64):
  for n in (2, 7, 18):
    levels = cm.karras_levels(jnp.asarray(n), 20, 0.002, 80.0)
    np.testing.assert_allclose(levels[:n], edm.karras_sigmas(n, 0.002, 80.0)[::-1], rtol=1e-12)
    np.testing.assert_allclose(levels[n:], 80.0, rtol=1e-12)
    assert levels.shape == (20,) and levels[0] == pytest.approx(0.002, rel=1e-13)


def test_ct_schedule():
  K = 1000
  k = np.arange(0, K + 1, 7).tolist() + [K]
  n = np.asarray(cm.ct_num_levels(jnp.asarray(k), K))
  want = np.ceil(np.sqrt(np.asarray(k) / K * (151**2 - 4) + 4) - 1) + 1
  assert n[0] == 2 and n[-1] == 151 and np.all(np.diff(n) >= 0)
  np.testing.assert_array_equal(n, want)
  np.testing.assert_allclose(cm.ct_target_decay(n), np.exp(2 * np.log(0.9) / n), rtol=1e-6)
  assert cm.ct_target_decay(2) == pytest.approx(0.9)


def test_ict_schedule_doubles_at_the_right_steps():
  K = 800  # K' = ⌊800 / (log2 128 + 1)⌋ = 100
  k = jnp.arange(K + 1)
  n = np.asarray(cm.ict_num_levels(k, K))
  for stage, want in enumerate([11, 21, 41, 81, 161, 321, 641, 1281, 1281]):
    assert set(n[100 * stage:100 * stage + 100].tolist()) <= {want}, stage
  assert n[99] == 11 and n[100] == 21 and n[799] == 1281 and n[800] == 1281
  assert int(cm.ict_num_levels(10**9, K)) == 1281


def test_ict_level_probs(x64):
  sigmas = cm.karras_levels(21, 1281, 0.002, 80.0)
  p = np.asarray(cm.ict_level_probs(sigmas, 21))
  assert p.shape == (1280,)
  assert p.sum() == pytest.approx(1.0, abs=1e-12)
  assert np.all(p[:20] > 0) and np.all(p[20:] == 0)
  # The lognormal (-1.1, 2) puts most mass around σ = e^-1.1 ≈ 0.33.
  assert 0.05 < sigmas[np.argmax(p)] < 2.0


# --- losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["consistency_training", "improved_consistency_training"])
def test_the_curriculum_does_not_recompile(name):
  """N(k) changes with the step k, a traced int: one trace, one compilation."""
  traces = []

  def model_fn(params, x, labels, train=False, rng=None):
    traces.append(1)
    return params * x

  loss_fn = losses.OBJECTIVES[name](SDE, model_fn, train=True, total_steps=800)
  step_fn = jax.jit(lambda p, key, x, step: loss_fn(p, key, x, step=step))
  x = _data(8, 2)
  levels = []
  for k in (0, 150, 400, 800):
    loss, aux = step_fn(jnp.asarray(0.5), jax.random.PRNGKey(k), x, jnp.asarray(k))
    assert np.isfinite(loss) and aux["losses"].shape == (8,)
    levels.append(int(aux["num_levels"]))
  assert len(set(levels)) == 4, levels
  assert step_fn._cache_size() == 1
  assert len(traces) == 2  # student and target, in the one trace


def test_aux_and_defaults():
  model_fn, params = _mlp_fn()
  x = _data(4, 2)
  ct = jax.jit(cm.get_ct_loss_fn(SDE, model_fn, train=False, total_steps=100))
  _, aux = ct(params, jax.random.PRNGKey(0), x)
  assert int(aux["num_levels"]) == 151
  assert float(aux["target_decay"]) == pytest.approx(np.exp(2 * np.log(0.9) / 151), rel=1e-6)
  _, aux = ct(params, jax.random.PRNGKey(0), x, step=0)
  assert int(aux["num_levels"]) == 2
  _, aux = ct(params, jax.random.PRNGKey(0), x, step=250)  # past K: the grid's s1 + 1 levels
  assert int(aux["num_levels"]) == 151
  ict = jax.jit(cm.get_ict_loss_fn(SDE, model_fn, train=False, total_steps=100))
  _, aux = ict(params, jax.random.PRNGKey(0), x)
  assert int(aux["num_levels"]) == 1281 and float(aux["target_decay"]) == 0.0
  cd = jax.jit(cm.get_cd_loss_fn(SDE, model_fn, train=False, teacher=_exact_teacher(),
                                 target_decay=0.99))
  loss, aux = cd(params, jax.random.PRNGKey(0), x)
  assert int(aux["num_levels"]) == 18 and float(aux["target_decay"]) == pytest.approx(0.99)
  # The target defaults to the stop-gradient student: same value with target_params = params.
  loss_target, _ = cd(params, jax.random.PRNGKey(0), x, target_params=params)
  assert float(loss) == float(loss_target)


def test_student_and_target_share_noise_and_dropout_key():
  calls = []

  def model_fn(params, x, labels, train=False, rng=None, class_labels=None):
    calls.append((rng, class_labels))
    return jnp.zeros_like(x)

  loss_fn = cm.get_ct_loss_fn(SDE, model_fn, train=True, total_steps=10, num_classes=3,
                              class_dropout=0.5)
  loss_fn(None, jax.random.PRNGKey(0), _data(6, 2), jnp.asarray([0, 1, 2, 0, 1, 2]))
  (rng_student, y_student), (rng_target, y_target) = calls
  np.testing.assert_array_equal(rng_student, rng_target)
  np.testing.assert_array_equal(y_student, y_target)
  with pytest.raises(ValueError, match="class_labels"):
    loss_fn(None, jax.random.PRNGKey(0), _data(6, 2))


def test_gradient_flows_through_the_student_only():
  """With target_params = params the gradient is that of ½ d(f_θ, sg(f_θ)), not of d(f_θ, f_θ)."""
  model_fn, params = _mlp_fn()
  loss_fn = cm.get_ct_loss_fn(SDE, model_fn, train=False, total_steps=10)
  loss = lambda p: loss_fn(p, jax.random.PRNGKey(0), _data(16, 2), target_params=p)[0]
  grads = jax.jit(jax.grad(loss))(params)
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads))


def test_pseudo_huber_metric(x64):
  """√(‖a - b‖² + c²) - c per sample, c = 0.00054 √d by default (d = 6 here)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 3))
  c = 0.00054 * np.sqrt(6)
  want = np.sqrt(np.sum(np.asarray(a).reshape(3, -1) ** 2, -1) + c**2) - c
  np.testing.assert_allclose(cm._metric("pseudo_huber", None, True)(a, 0 * a), want, rtol=1e-12)
  np.testing.assert_allclose(cm._metric("pseudo_huber", 0.1, True)(a, 0 * a),
                             np.sqrt(np.sum(np.asarray(a).reshape(3, -1) ** 2, -1) + 0.01) - 0.1,
                             rtol=1e-12)


def test_ict_weight_and_metric(x64):
  """iCT: λ = 1/(σ_{n+1} - σ_n) times the pseudo-Huber distance, checked against the per-sample
  loss rebuilt by hand from the same draws (same key, same split order)."""
  model_fn, params = _mlp_fn()
  x0 = _data(64, 2)
  loss_fn = jax.jit(cm.get_ict_loss_fn(SDE, model_fn, train=False, total_steps=80, s0=10, s1=40))
  _, aux = loss_fn(params, jax.random.PRNGKey(3), x0)
  k_n, k_z, _ = jax.random.split(jax.random.PRNGKey(3), 3)
  sigmas = cm.karras_levels(41, 41, 0.002, 80.0)
  n = jax.random.categorical(k_n, jnp.log(cm.ict_level_probs(sigmas, 41)), shape=(64,))
  z = jax.random.normal(k_z, x0.shape, x0.dtype)
  f = jax.jit(cm.consistency_function(model_fn))
  a = f(params, x0 + sigmas[n + 1][:, None] * z, sigmas[n + 1])
  b = f(params, x0 + sigmas[n][:, None] * z, sigmas[n])
  c = 0.00054 * np.sqrt(2)
  want = (np.sqrt(np.sum((a - b) ** 2, -1) + c**2) - c) / (sigmas[n + 1] - sigmas[n])
  np.testing.assert_allclose(aux["losses"], want, rtol=1e-10)


@pytest.mark.parametrize("build, kwargs, match", [
    (cm.get_cd_loss_fn, dict(teacher=_exact_teacher(), metric="l1"), "metric"),
    (cm.get_cd_loss_fn, dict(teacher=_exact_teacher(), solver="rk4"), "solver"),
    (cm.get_cd_loss_fn, dict(teacher=_exact_teacher(), num_levels=1), "num_levels"),
    (cm.get_cd_loss_fn, dict(teacher=_exact_teacher(), sigma_min=80.0), "sigma_min < sigma_max"),
    (cm.get_cd_loss_fn, dict(teacher=_exact_teacher(), target_decay=1.5), "target_decay"),
    (cm.get_ct_loss_fn, dict(total_steps=0), "total_steps"),
    (cm.get_ct_loss_fn, dict(total_steps=10, s0=1), "s0"),
    (cm.get_ct_loss_fn, dict(total_steps=10, huber_c=0.0), "huber_c"),
    (cm.get_ict_loss_fn, dict(total_steps=10, s0=20, s1=10), "s0"),
    (cm.get_ict_loss_fn, dict(total_steps=10, p_std=0.0), "p_std"),
])
def test_bad_options_are_rejected(build, kwargs, match):
  with pytest.raises(ValueError, match=match):
    build(SDE, _exact_model_fn, train=False, **kwargs)


# --- the exact consistency function of Gaussian data -------------------------------------------

def _loss_and_grads(loss_fn, x0, key=jax.random.PRNGKey(0)):
  """Mean loss and the per-sample gradients [B] w.r.t. (μ, s) at f* (forward mode: 2 parameters)."""
  per_sample = lambda p: loss_fn(p, key, x0)[1]["losses"]
  losses_, grads = jax.jit(lambda p: (per_sample(p), jax.jacfwd(per_sample)(p)))(_params())
  return float(jnp.mean(losses_)), {k: np.asarray(v) for k, v in grads.items()}


def _mean_and_se(g):
  return g.mean(), g.std() / np.sqrt(g.size)


def test_exact_model_is_f_star(x64):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  for sigma in (0.002, 0.1, 5.0, 80.0):
    f = cm.consistency_function(_exact_model_fn)(_params(), x, jnp.full((4,), sigma))
    want = MU + (x - MU) * np.sqrt(S**2 + SIGMA_MIN**2) / np.sqrt(S**2 + sigma**2)
    np.testing.assert_allclose(f, want, rtol=1e-12, atol=1e-13)


def test_cd_with_the_exact_teacher_converges_at_the_solver_order(x64):
  """At f* the CD loss is the squared error of one teacher step (f* is constant along the exact
  flow): O(h³) per pair for Heun, O(h²) for Euler, h ∝ 1/N on the ρ-grid, so the loss falls like
  N^-6 and N^-4 and its gradient (error × ∂f) like N^-3 and N^-2. The s-gradient is this
  deterministic solver bias (thousands of standard errors at N = 21: f* is not a stationary point
  at finite N); the μ-gradient vanishes in expectation by the symmetry z -> -z. Slopes are fitted
  over N = 21, 41, 81 with 4096 samples: the Monte-Carlo spread of the fitted slopes is ~0.1 (the
  largest steps dominate and are drawn ~50 times each) and the pre-asymptotic drift ~0.2, hence the
  tolerance 0.5 (it separates orders 6 / 4 and 3 / 2)."""
  x0 = _data(4096)
  ns = np.array([21, 41, 81])
  for solver, order in (("heun", 3), ("euler", 2)):
    loss_values, s_grads = [], []
    for n in ns:
      loss_fn = cm.get_cd_loss_fn(SDE, _exact_model_fn, train=False, teacher=_exact_teacher(),
                                  num_levels=int(n), solver=solver)
      loss, grads = _loss_and_grads(loss_fn, x0)
      loss_values.append(loss)
      s_grads.append(abs(grads["s"].mean()))
      mean, se = _mean_and_se(grads["mu"])
      assert abs(mean) < 4 * se, (solver, n, mean, se)
    loss_slope = np.polyfit(np.log(ns), np.log(loss_values), 1)[0]
    grad_slope = np.polyfit(np.log(ns), np.log(s_grads), 1)[0]
    assert abs(loss_slope + 2 * order) < 0.5, (solver, loss_slope)
    assert abs(grad_slope + order) < 0.5, (solver, grad_slope)


def test_ct_gradient_is_cd_euler_gradient_in_expectation(x64):
  """Consistency training at f* has the expected gradient of distillation with one Euler step of
  the exact denoiser (Song et al. 2023, Theorem 2). For Gaussian data it is exact, not only up to
  o(Δσ): given x = x_{σ_{n+1}}, E[x_0 + σ_n z | x] = (σ_n/σ_{n+1}) x
  + (1 - σ_n/σ_{n+1}) D(x, σ_{n+1}) is the Euler step, and f*(·, σ_n) is affine, so
  E[f*(x̂_CT) | x] = f*(x̂_Euler); the student's ∂f*(x)/∂θ depends on x only. So the CT gradient at
  f* is not zero at finite N: it is the Euler bias O(N^-2) of the test above, vanishing as N -> ∞. Same key: same n and z in both losses; the
  per-sample difference has conditional mean zero, checked within 4 standard errors."""
  x0 = _data(4096)
  ct = cm.get_ct_loss_fn(SDE, _exact_model_fn, train=False, total_steps=10, s1=20)
  cd = cm.get_cd_loss_fn(SDE, _exact_model_fn, train=False, teacher=_exact_teacher(),
                         num_levels=21, solver="euler")
  _, g_ct = _loss_and_grads(ct, x0)
  _, g_cd = _loss_and_grads(cd, x0)
  for name in ("mu", "s"):
    mean, se = _mean_and_se(g_ct[name] - g_cd[name])
    assert abs(mean) < 4 * se, (name, mean, se)
  mean, se = _mean_and_se(g_cd["s"])
  assert mean > 10 * se  # the bias CT shares is real at N = 21


# --- the sampler ------------------------------------------------------------------------------

def _exact_consistency_model():
  return cm.get_consistency_model(_exact_model_fn, _params(), sigma_data=SIGMA_DATA,
                                  sigma_min=SIGMA_MIN)


@pytest.mark.parametrize("options", [dict(), dict(num_steps=2), dict(sigmas=[80.0, 2.0, 0.3])])
def test_sampler_with_f_star_draws_the_data_law(options, x64):
  """x̂ = f*(σ_1 z, σ_1) ~ N(μ(1 - a_1), (σ_1 a_1)²), a_i = √(s² + σ_min²)/√(s² + σ_i²): the start
  σ_1 z ignores the data mean, as every sampler's prior does. Each further step maps N(m, v) to
  N(μ + a_i (m - μ), a_i² (v + σ_i² - σ_min²)), which keeps v = s² + σ_min² and shrinks the mean's
  error. Both the exact recursion and the target law N(μ, s² + σ_min²) (off by μ a_1 ≈ 0.003 after
  one step, under one standard error) hold within 4 standard errors of 40000 draws."""
  sigmas = options.get("sigmas") or edm.karras_sigmas(options.get("num_steps", 1) + 1, 0.002, 80.0)[
      :options.get("num_steps", 1)]
  x, info = sample_consistency(jax.random.PRNGKey(0), _exact_consistency_model(), SDE, (20000, 2),
                               **options)
  assert info["nfe"] == len(sigmas) and type(info["nfe"]) is int
  a = lambda sigma: np.sqrt(S**2 + SIGMA_MIN**2) / np.sqrt(S**2 + sigma**2)
  mean, var = MU * (1 - a(sigmas[0])), (sigmas[0] * a(sigmas[0])) ** 2
  for sigma in sigmas[1:]:
    mean, var = MU + a(sigma) * (mean - MU), a(sigma) ** 2 * (var + sigma**2 - SIGMA_MIN**2)
  x = np.asarray(x).ravel()
  se_mean, se_std = x.std() / np.sqrt(x.size), x.std() / np.sqrt(2 * x.size)
  for want_mean, want_std in ((mean, np.sqrt(var)), (MU, np.sqrt(S**2 + SIGMA_MIN**2))):
    assert abs(x.mean() - want_mean) < 4 * se_mean
    assert abs(x.std() - want_std) < 4 * se_std


def test_sampler_defaults_and_errors(x64):
  model = _exact_consistency_model()
  key = jax.random.PRNGKey(0)
  one, info = sample_consistency(key, model, SDE, (3, 2))
  also_one, _ = sample_consistency(key, model, SDE, (3, 2), sigmas=[80.0])  # σ_max = σ(T) = 80
  np.testing.assert_allclose(one, also_one, rtol=1e-12)
  assert info["nfe"] == 1
  _, info = sample_consistency(key, model, SDE, (3, 2), num_steps=4)
  assert info["nfe"] == 4
  with pytest.raises(ValueError, match="descending"):
    sample_consistency(key, model, SDE, (3, 2), sigmas=[1.0, 2.0])
  with pytest.raises(ValueError, match="exceed sigma_min"):
    sample_consistency(key, model, SDE, (3, 2), sigmas=[80.0, 0.002])
  with pytest.raises(ValueError, match="num_steps"):
    sample_consistency(key, model, SDE, (3, 2), num_steps=0)
  with pytest.raises(ValueError, match="1-D"):
    sample_consistency(key, model, SDE, (3, 2), sigmas=[[80.0]])


# --- distillation of a Gaussian mixture -------------------------------------------------------

def _sliced_w1(a, b, key, num_directions=128):
  """Sliced Wasserstein-1 between equal-size 2-D samples: W1 of sorted 1-D projections, averaged."""
  d = jax.random.normal(key, (num_directions, 2))
  d = d / jnp.linalg.norm(d, axis=1, keepdims=True)
  return float(jnp.mean(jnp.abs(jnp.sort(a @ d.T, 0) - jnp.sort(b @ d.T, 0))))


@pytest.mark.slow
def test_distilled_mixture_samples_in_one_and_two_steps():
  """CD (Heun, N = 18, target EMA μ = 0.95) from the exact score of a 4-mode ring (radius 2, mode
  std 0.25) on σ in [0.002, 10]: a 3 x 64 MLP, 2000 Adam steps of 256 (about 20 s on 2 cores,
  float32). The score teacher goes through ``as_denoiser``: the VESDE maps σ to t.

  Sliced W1 over 20000 samples against fresh mixture samples: the true-vs-true baseline is 0.014;
  the target network reaches ~0.04 in one step and ~0.035 in two (three training seeds: ratios to
  the baseline 2.9 / 2.6, 2.6 / 2.1, 2.8 / 2.7), i.e. 2% of the ring's radius. The bound
  3 x baseline + 0.02 (0.02 = 8% of a mode's std) leaves room for platform rounding. Two steps
  beat one for every seed tried, by 5-20%, a real but modest gap: this run is deterministic, so the
  check is stable here, but a change of seeds or platform could close it."""
  import flax.linen as nn
  import optax

  from score_sde.diffusion import toy

  mixture = toy.ring(n_modes=4, radius=2.0, std=0.25)
  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=10.0)

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, c_noise):
      freqs = 2.0 ** jnp.arange(4)
      h = jnp.concatenate([x, jnp.sin(c_noise[:, None] * freqs), jnp.cos(c_noise[:, None] * freqs)],
                          -1)
      for _ in range(3):
        h = nn.silu(nn.Dense(64)(h))
      return nn.Dense(2)(h)

  net = MLP()
  model_fn = lambda p, x, labels, train=False, rng=None: net.apply(p, x, labels)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
  loss_fn = cm.get_cd_loss_fn(sde, model_fn, train=True, teacher=mixture.score_fn(sde),
                              sigma_max=10.0, sigma_data=1.0)
  opt = optax.adam(1e-3)

  def train_step(carry, key):
    params, target, opt_state = carry
    k_data, k_loss = jax.random.split(key)
    grads, aux = jax.grad(loss_fn, has_aux=True)(params, k_loss, mixture.sample(k_data, 256),
                                                 target_params=target)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    mu = aux["target_decay"]
    target = jax.tree.map(lambda t, p: mu * t + (1 - mu) * p, target, params)
    return (params, target, opt_state), jnp.mean(aux["losses"])

  train = jax.jit(lambda carry, keys: jax.lax.scan(train_step, carry, keys))
  (_, target, _), loss = train((params, params, opt.init(params)),
                               jax.random.split(jax.random.PRNGKey(1), 2000))
  assert float(loss[-200:].mean()) < 0.2 * float(loss[:5].mean())

  n = 20000
  reference = mixture.sample(jax.random.PRNGKey(10), n)
  key = jax.random.PRNGKey(5)
  baseline = _sliced_w1(mixture.sample(jax.random.PRNGKey(11), n), reference, key)
  model = cm.get_consistency_model(model_fn, target, sigma_data=1.0)
  distances = {}
  for steps in (1, 2):
    x, info = sample_consistency(jax.random.PRNGKey(3), model, sde, (n, 2), num_steps=steps)
    assert info["nfe"] == steps
    distances[steps] = _sliced_w1(x, reference, key)
    assert distances[steps] < 3 * baseline + 0.02, (steps, distances, baseline)
  assert distances[2] < distances[1], distances
