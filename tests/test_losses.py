"""Training objectives at the exact score of Gaussian data, where their minima are known.

For x_0 ~ N(mu, diag(v)) and x_t = m x_0 + std z, the exact score makes the residual of every loss
Gaussian, and its expected squared norm per dimension is m^2 v_d / (m^2 v_d + std^2) (for the
plain, SMLD and DDPM losses alike; likelihood weighting multiplies it by g^2 / std^2). For the EDM
loss at noise level σ it is λ(σ) Var[x_0,d | x_σ] = (σ^2 + σ_d^2) v_d / (σ_d^2 (v_d + σ^2)),
averaged over ln σ ~ N(P_mean, P_std^2).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from score_sde.diffusion import losses, parametrization
from score_sde.diffusion import sde as sde_lib

MU = np.array([1.0, -1.0, 0.5])
VAR = np.array([0.5, 1.0, 2.0])
N_SAMPLES = 40_000


def _gaussian_score(x, m, std):
  """Score of N(m mu, m^2 diag(VAR) + std^2 I); m, std: [B]."""
  m, std = m[:, None], std[:, None]
  return -(x - m * MU) / (m**2 * VAR + std**2)


def _per_time_value(m, std, reduce_mean):
  total = np.sum(m**2 * VAR / (m**2 * VAR + std**2))
  return total / len(VAR) if reduce_mean else 0.5 * total


def _time_from_label(sde, labels):
  if isinstance(sde, sde_lib.VESDE):  # continuous VE label is sigma(t)
    return jnp.log(labels / sde.sigma_min) / jnp.log(sde.sigma_max / sde.sigma_min)
  return labels / 999.0


def _model_fn(sde, kind):
  """A 'network' that is exact at params a = b = 0: output(exact) + a x + b."""

  def exact_output(x, labels):
    if kind == "edm":  # F* = (D* - c_skip x_σ) / c_out at the input c_in x_σ, label ln(σ) / 4
      sigma = jnp.exp(4.0 * labels)
      c_skip, c_out, c_in, _ = (c[:, None] for c in parametrization.preconditioning(sigma))
      x_sigma = x / c_in
      d_exact = MU + VAR / (VAR + sigma[:, None] ** 2) * (x_sigma - MU)
      return (d_exact - c_skip * x_sigma) / c_out
    if kind == "continuous":
      t = _time_from_label(sde, labels)
      m, std = sde.marginal_params(t)
      score = _gaussian_score(x, m, std)
      # Invert the parametrization: VE outputs the score, VP/sub-VP output -std * score.
      return score if isinstance(sde, sde_lib.VESDE) else -std[:, None] * score
    if kind == "smld":
      sigma = jnp.flip(sde.discrete_sigmas)[labels]
      return _gaussian_score(x, jnp.ones_like(sigma), sigma)
    m, std = sde.sqrt_alphas_cumprod[labels], sde.sqrt_1m_alphas_cumprod[labels]
    return -std[:, None] * _gaussian_score(x, m, std)  # epsilon prediction

  def model_fn(params, x, labels, *, train, rng):
    del train, rng
    return exact_output(x, labels) + params["a"] * x + params["b"]

  return model_fn


def _analytic_loss(sde, kind, reduce_mean, likelihood_weighting, eps=1e-5):
  if kind == "edm":
    sigma_data, p_mean, p_std = 0.5, -1.2, 1.2

    def integrand(log_sigma):
      s2 = np.exp(2 * log_sigma)
      per_dim = (s2 + sigma_data**2) * VAR / (sigma_data**2 * (VAR + s2))
      density = np.exp(-0.5 * ((log_sigma - p_mean) / p_std) ** 2) / (p_std * np.sqrt(2 * np.pi))
      return (per_dim.mean() if reduce_mean else 0.5 * per_dim.sum()) * density

    total, _ = integrate.quad(integrand, p_mean - 12 * p_std, p_mean + 12 * p_std, epsrel=1e-10)
    return total
  if kind == "smld":
    sig = np.asarray(sde.discrete_sigmas)
    return np.mean([_per_time_value(1.0, s, reduce_mean) for s in sig])
  if kind == "ddpm":
    m, s = np.asarray(sde.sqrt_alphas_cumprod), np.asarray(sde.sqrt_1m_alphas_cumprod)
    return np.mean([_per_time_value(mi, si, reduce_mean) for mi, si in zip(m, s)])

  def integrand(log_t):
    t = np.exp(log_t)
    m, std = (float(v[0]) for v in sde.marginal_params(jnp.array([t])))
    value = _per_time_value(m, std, reduce_mean)
    if likelihood_weighting:
      value *= float(sde.diffusion_coef(jnp.array([t]))[0]) ** 2 / std**2
    return value * t  # dt = t dlog t

  total, _ = integrate.quad(integrand, np.log(eps), 0.0, limit=200, epsrel=1e-10)
  return total / (sde.T - eps)


CASES = [
    ("ve", "continuous", False, False),
    ("vp", "continuous", True, False),
    ("subvp", "continuous", True, False),
    ("ve", "continuous", False, True),
    ("vp", "continuous", True, True),
    ("subvp", "continuous", False, True),
    ("ve", "smld", False, False),
    ("vp", "ddpm", True, False),
    ("vp", "edm", True, False),
    ("ve", "edm", False, False),
]


def _make_sde(name, kind):
  n = 100 if kind != "continuous" else 1000
  return {"ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=n), "vp": sde_lib.VPSDE(N=n),
          "subvp": sde_lib.SubVPSDE(N=n)}[name]


@pytest.mark.parametrize("sde_name,kind,reduce_mean,likelihood_weighting", CASES)
def test_loss_at_exact_score(sde_name, kind, reduce_mean, likelihood_weighting, x64):
  sde = _make_sde(sde_name, kind)
  model_fn = _model_fn(sde, kind)
  loss_fn = losses.get_loss_fn("edm" if kind == "edm" else None, sde, model_fn, train=True,
                               reduce_mean=reduce_mean, continuous=kind in ("continuous", "edm"),
                               likelihood_weighting=likelihood_weighting)
  key_data, key_loss = jax.random.split(jax.random.PRNGKey(0))
  x0 = jnp.asarray(MU + np.sqrt(VAR) * np.asarray(jax.random.normal(key_data, (N_SAMPLES, 3))))
  zero = {"a": jnp.float64(0.0), "b": jnp.float64(0.0)}

  # 1. The loss at the exact score is its analytic irreducible value (within Monte-Carlo error).
  loss, aux = jax.jit(loss_fn)(zero, key_loss, x0)
  per_sample = np.asarray(aux["losses"])
  se = per_sample.std() / np.sqrt(N_SAMPLES)
  expected = _analytic_loss(sde, kind, reduce_mean, likelihood_weighting)
  assert abs(float(loss) - expected) < 4 * se, (float(loss), expected, se)
  # Sharp enough to catch a wrong weighting (VP likelihood weighting has a 1/t tail: SE ~ 7%).
  assert se < 0.1 * expected

  # 2. The gradient with respect to a perturbation of the exact score is zero in expectation.
  per_sample_grads = jax.jacfwd(lambda p: loss_fn(p, key_loss, x0)[1]["losses"])(zero)
  for name, g in per_sample_grads.items():
    g = np.asarray(g)
    assert abs(g.mean()) < 4 * g.std() / np.sqrt(N_SAMPLES), name

  # 3. A wrong score gives a strictly larger loss (paired over the same noise).
  wrong = {"a": jnp.float64(0.2), "b": jnp.float64(0.1)}
  loss_wrong, aux_wrong = loss_fn(wrong, key_loss, x0)
  diff = np.asarray(aux_wrong["losses"]) - per_sample
  assert diff.mean() > 4 * diff.std() / np.sqrt(N_SAMPLES)
  assert float(loss_wrong) > float(loss)


def test_objectives_are_named():
  assert set(losses.OBJECTIVES) == {"dsm", "smld", "ddpm", "edm", "flow_matching",
                                    "consistency_distillation", "consistency_training",
                                    "improved_consistency_training"}


@pytest.mark.parametrize("sde_name,continuous,expected", [
    ("ve", True, "dsm"), ("vp", True, "dsm"), ("subvp", True, "dsm"),
    ("ve", False, "smld"), ("vp", False, "ddpm")])
def test_default_objective_is_the_reference_rule(sde_name, continuous, expected, x64):
  kind = "continuous" if continuous else expected
  sde = _make_sde(sde_name, kind)
  assert losses.default_objective(sde, continuous) == expected
  model_fn = _model_fn(sde, kind)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
  params = {"a": jnp.float64(0.1), "b": jnp.float64(0.2)}
  default, named = (losses.get_loss_fn(objective, sde, model_fn, train=True, continuous=continuous)
                    for objective in (None, expected))
  key = jax.random.PRNGKey(1)
  np.testing.assert_array_equal(default(params, key, x0)[1]["losses"],
                                named(params, key, x0)[1]["losses"])


def test_invalid_combinations_are_rejected():
  model_fn = lambda params, x, labels, *, train, rng: x
  with pytest.raises(ValueError, match="likelihood_weighting"):
    losses.get_loss_fn(None, sde_lib.VPSDE(), model_fn, train=True, continuous=False,
                       likelihood_weighting=True)
  with pytest.raises(ValueError, match="SubVPSDE"):
    losses.get_loss_fn(None, sde_lib.SubVPSDE(), model_fn, train=True, continuous=False)
  with pytest.raises(ValueError, match="Unknown objective 'flow'"):
    losses.get_loss_fn("flow", sde_lib.VPSDE(), model_fn, train=True)
  with pytest.raises(ValueError, match="'dsm' objective only"):
    losses.get_loss_fn("edm", sde_lib.VPSDE(), model_fn, train=True, likelihood_weighting=True)
  with pytest.raises(ValueError, match="not defined for VPSDE"):
    losses.get_loss_fn("smld", sde_lib.VPSDE(), model_fn, train=True, continuous=False)
  with pytest.raises(ValueError, match="not defined for VESDE"):
    losses.get_loss_fn("ddpm", sde_lib.VESDE(), model_fn, train=True, continuous=False)
  with pytest.raises(ValueError, match="continuous=False"):
    losses.get_loss_fn("ddpm", sde_lib.VPSDE(), model_fn, train=True, continuous=True)


def test_loss_passes_dropout_rng_and_train_flag():
  seen = {}

  def model_fn(params, x, labels, *, train, rng):
    seen["train"], seen["rng"] = train, rng
    return jnp.zeros_like(x)

  loss_fn = losses.get_loss_fn(None, sde_lib.VPSDE(), model_fn, train=True, continuous=True)
  rngs = []
  for seed in (0, 0, 1):
    key = jax.random.PRNGKey(seed)
    loss_fn({}, key, jnp.ones((2, 3)))
    assert seen["train"] is True
    # A key derived from the loss key: never the loss key itself (t and z are drawn from it).
    assert seen["rng"].shape == key.shape and not np.array_equal(seen["rng"], key)
    rngs.append(np.asarray(seen["rng"]))
  np.testing.assert_array_equal(rngs[0], rngs[1])  # deterministic in the key
  assert not np.array_equal(rngs[0], rngs[2])  # and it varies with it
