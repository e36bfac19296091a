"""The SDEs against their closed forms and against simulation of the forward SDE."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

ALL_SDES = [
    pytest.param(lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=1000), id="ve"),
    pytest.param(lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000), id="vp"),
    pytest.param(lambda: sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0, N=1000), id="subvp"),
]


def _simulate_forward(sde, key, x0, n_steps):
  """Euler-Maruyama simulation of dx = f dt + g dw from x0 [B, D]; returns x(t) [n_steps, B, D]."""
  dt = sde.T / n_steps

  def step(x, inp):
    i, k = inp
    t = jnp.full((x.shape[0],), i * dt, x.dtype)
    drift, g = sde.sde(x, t)
    x = x + drift * dt + g[:, None] * jnp.sqrt(dt) * jax.random.normal(k, x.shape, x.dtype)
    return x, x

  keys = jax.random.split(key, n_steps)
  return jax.lax.scan(step, x0, (jnp.arange(n_steps), keys))[1]


@pytest.mark.parametrize("make_sde", ALL_SDES)
def test_marginal_prob_matches_simulated_forward_sde(make_sde, x64):
  sde = make_sde()
  n, n_steps, x0_value = 60_000, 1000, 1.5
  x0 = jnp.full((n, 1), x0_value)
  path = _simulate_forward(sde, jax.random.PRNGKey(0), x0, n_steps)
  for t_end in (0.3, 1.0):
    xt = np.asarray(path[round(t_end * n_steps) - 1, :, 0])
    mean, std = sde.marginal_prob(x0[:1], jnp.array([t_end]))
    mean, var = float(mean[0, 0]), float(std[0]) ** 2
    # Monte-Carlo standard errors of the sample mean and variance of a Gaussian.
    se_mean = np.sqrt(var / n)
    se_var = var * np.sqrt(2.0 / (n - 1))
    # Euler-Maruyama bias of the variance is O(beta dt / 4) ~ 0.5% for VP at 1000 steps, and the
    # VE kernel neglects the starting variance sigma_min^2 = 1e-4: both are inside 5 SE + 1%.
    assert abs(xt.mean() - mean) < 5 * se_mean + 1e-3, t_end
    assert abs(xt.var() - var) < 5 * se_var + 1e-2 * var, t_end


@pytest.mark.parametrize("make_sde", ALL_SDES)
def test_marginal_moments_solve_the_moment_odes(make_sde, x64):
  """Exact check: d m/dt = a(t) m and d std^2/dt = 2 a(t) std^2 + g(t)^2 for f = a(t) x."""
  sde = make_sde()
  t = jnp.linspace(0.05, 1.0, 17)
  m_fn = lambda t: sde.marginal_params(t)[0]
  var_fn = lambda t: sde.marginal_params(t)[1] ** 2
  dm = jax.jvp(m_fn, (t,), (jnp.ones_like(t),))[1]
  dvar = jax.jvp(var_fn, (t,), (jnp.ones_like(t),))[1]
  a, g = sde.drift_coef(t), sde.diffusion_coef(t)
  np.testing.assert_allclose(dm, a * m_fn(t), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(dvar, 2 * a * var_fn(t) + g**2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make_sde", ALL_SDES)
def test_prior_logp_and_sampling(make_sde, x64):
  sde = make_sde()
  shape = (4, 3, 2)
  z = jax.random.normal(jax.random.PRNGKey(1), shape) * 2.0
  sigma = sde.prior_std
  expected = stats.multivariate_normal(np.zeros(6), sigma**2 * np.eye(6)).logpdf(
      np.asarray(z).reshape(4, 6))
  np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-12)

  n = 200_000
  samples = np.asarray(sde.prior_sampling(jax.random.PRNGKey(2), (n, 2)))
  np.testing.assert_allclose(samples.mean(0), 0.0, atol=5 * sigma / np.sqrt(n))
  np.testing.assert_allclose(samples.var(0), sigma**2, rtol=5 * np.sqrt(2 / n))


def test_time_to_index_truncates():
  sde = sde_lib.VPSDE(N=10)
  t = jnp.array([0.0, 0.11, 0.5, 0.999, 1.0])
  np.testing.assert_array_equal(sde.time_to_index(t), [int(v * 9) for v in [0.0, 0.11, 0.5, 0.999, 1.0]])


def test_ve_discretize_is_smld(x64):
  n = 7
  sde = sde_lib.VESDE(sigma_min=0.02, sigma_max=30.0, N=n)
  sigmas = np.exp(np.linspace(np.log(0.02), np.log(30.0), n))
  t = np.array([0.0, 0.1, 0.4, 0.77, 1.0])
  x = jnp.ones((5, 2))
  f, G = sde.discretize(x, jnp.asarray(t))
  idx = [int(v * (n - 1)) for v in t]
  prev = [sigmas[i - 1] if i > 0 else 0.0 for i in idx]
  np.testing.assert_allclose(G, np.sqrt(sigmas[idx] ** 2 - np.square(prev)), rtol=1e-12)
  np.testing.assert_array_equal(f, 0.0)


def test_vp_discretize_is_ddpm(x64):
  n = 40
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=n)
  betas = np.linspace(0.1 / n, 20.0 / n, n)
  t = np.array([0.0, 0.3, 0.8, 1.0])
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  f, G = sde.discretize(x, jnp.asarray(t))
  idx = [int(v * (n - 1)) for v in t]
  np.testing.assert_allclose(G, np.sqrt(betas[idx]), rtol=1e-12)
  np.testing.assert_allclose(f, (np.sqrt(1 - betas[idx])[:, None] - 1) * np.asarray(x), rtol=1e-12)
  np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)


def test_subvp_discretize_is_euler_maruyama(x64):
  sde = sde_lib.SubVPSDE(N=50)
  t = jnp.array([0.1, 0.6])
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
  f, G = sde.discretize(x, t)
  drift, g = sde.sde(x, t)
  np.testing.assert_allclose(f, drift / 50, rtol=1e-12)
  np.testing.assert_allclose(G, g * np.sqrt(1 / 50), rtol=1e-12)


@pytest.mark.parametrize("make_sde", ALL_SDES)
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_drift_and_discretization(make_sde, probability_flow, x64):
  sde = make_sde()
  mix = toy.isotropic_mixture([0.3, 0.7], jnp.array([[-1.0, 0.5], [2.0, 1.0]]), 0.5)
  score_fn = mix.score_fn(sde)
  x = jax.random.normal(jax.random.PRNGKey(3), (6, 2))
  t = jnp.linspace(0.05, 0.95, 6)
  rev = sde.reverse(score_fn, probability_flow=probability_flow)
  w = 0.5 if probability_flow else 1.0
  f, g = sde.sde(x, t)
  s = score_fn(x, t)
  drift, diffusion = rev.sde(x, t)
  np.testing.assert_allclose(drift, f - w * (g**2)[:, None] * s, rtol=1e-12)
  np.testing.assert_allclose(diffusion, 0.0 if probability_flow else g, rtol=1e-12)
  fd, G = sde.discretize(x, t)
  rev_f, rev_G = rev.discretize(x, t)
  np.testing.assert_allclose(rev_f, fd - w * (G**2)[:, None] * s, rtol=1e-12)
  np.testing.assert_allclose(rev_G, 0.0 if probability_flow else G, rtol=1e-12)
  assert rev.N == sde.N and rev.T == sde.T


@pytest.mark.slow
@pytest.mark.parametrize("make_sde", ALL_SDES)
def test_sdes_are_pytrees_and_transformable(make_sde):
  sde = make_sde()
  leaves, treedef = jax.tree_util.tree_flatten(sde)
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert rebuilt == sde and rebuilt.N == sde.N
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
  t = jnp.linspace(0.1, 0.9, 5)

  # jit with the SDE as an argument (a pytree), vmap over samples, grad through t and the parameters.
  jitted = jax.jit(lambda s, x, t: s.marginal_prob(x, t))(sde, x, t)
  np.testing.assert_allclose(jitted[0], sde.marginal_prob(x, t)[0], rtol=1e-6)
  per_sample = jax.vmap(lambda xi, ti: sde.sde(xi[None], ti[None])[0][0])(x, t)
  np.testing.assert_allclose(per_sample, sde.sde(x, t)[0], rtol=1e-6)
  dstd_dt = jax.grad(lambda ti: sde.marginal_prob(x[:1], ti[None])[1][0])(jnp.float32(0.5))
  assert np.isfinite(dstd_dt) and dstd_dt > 0
  grads = jax.grad(lambda s: jnp.sum(s.prior_logp(x) + s.discretize(x, t)[1]))(sde)
  assert all(np.isfinite(g) for g in jax.tree_util.tree_leaves(grads))
  # discretize and reverse also trace under jit.
  rev = jax.jit(lambda x, t: sde.reverse(lambda x, t: -x).discretize(x, t))(x, t)
  assert rev[0].shape == x.shape
