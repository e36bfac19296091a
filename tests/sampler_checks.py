"""Distribution checks shared by the sampler tests: a 2-D Gaussian mixture with its exact scores."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.samplers import pc
from score_sde.diffusion import sde as sde_lib
from score_sde.diffusion import toy

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-2.0, 0.0], [1.5, 1.0]])  # 7 component std apart: responsibilities are ~0/1
STD = 0.5
N_SAMPLES = 2000


def mixture() -> toy.GaussianMixture:
  return toy.isotropic_mixture(WEIGHTS, jnp.asarray(MEANS, jnp.float32), STD)


def isotropic_score_fn(sde):
  """Exact score of the diffused isotropic mixture, written without Cholesky factors.

  p_t = sum_k w_k N(m mu_k, (m^2 STD^2 + std^2) I), so the score is
  sum_k r_k (m mu_k - x) / var with r the posterior component probabilities. It is equal to
  toy.GaussianMixture.marginal_score (checked in test_sampling.py) but compiles and runs faster.
  """
  weights, means = jnp.asarray(WEIGHTS, jnp.float32), jnp.asarray(MEANS, jnp.float32)

  def score_fn(x, t):
    m, std = sde.marginal_params(t)
    var = (m**2 * STD**2 + std**2)[:, None]  # [B, 1]
    diff = x[:, None, :] - m[:, None, None] * means  # [B, K, D]
    logits = jnp.log(weights) - 0.5 * jnp.sum(diff**2, -1) / var
    resp = jax.nn.softmax(logits, axis=-1)  # [B, K]
    return -jnp.einsum("bk,bkd->bd", resp, diff) / var

  return score_fn


def sliced_wasserstein(a, b, n_projections=64, seed=0):
  """Sliced 2-Wasserstein distance squared between equal-size point sets [n, D] (NumPy)."""
  rng = np.random.default_rng(seed)
  dirs = rng.normal(size=(n_projections, a.shape[1]))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  pa, pb = np.sort(a @ dirs.T, axis=0), np.sort(b @ dirs.T, axis=0)
  return float(np.mean((pa - pb) ** 2))


@functools.lru_cache(maxsize=None)
def null_sliced_wasserstein(n, n_pairs=8, seed=1):
  """SW^2 between pairs of independent true sample sets of size n: the statistic's noise floor."""
  mix = mixture()
  keys = jax.random.split(jax.random.PRNGKey(seed), 2 * n_pairs)
  sets = [np.asarray(mix.sample(k, n), np.float64) for k in keys]
  return np.array([sliced_wasserstein(sets[2 * i], sets[2 * i + 1]) for i in range(n_pairs)])


def distribution_errors(x, seed=123):
  """Monte-Carlo-normalised errors of samples x [n, 2] against the mixture.

  Returns (mean_z, cov_z, weight_z, sw, null): mean and covariance errors in units of their
  standard errors, the weight error in units of its binomial standard error, the sliced
  Wasserstein distance to fresh true samples, and the null draws of that statistic.
  """
  x = np.asarray(x, np.float64)
  assert np.all(np.isfinite(x)), "sampler produced non-finite values"
  n = len(x)
  mix = mixture()
  mean, cov = np.asarray(mix.mean, np.float64), np.asarray(mix.cov, np.float64)
  mean_z = np.abs(x.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
  # SE of a sample covariance entry, sqrt((C_ii C_jj + C_ij^2) / n), exact for Gaussian data;
  # the bimodal mixture is lighter-tailed than a Gaussian along its long axis.
  se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
  cov_z = np.abs(np.cov(x.T) - cov) / se_cov
  weights = np.asarray(mix.responsibilities(jnp.asarray(x, jnp.float32))).mean(0)
  weight_z = np.abs(weights - WEIGHTS) / np.sqrt(WEIGHTS * (1 - WEIGHTS) / n)
  ref = np.asarray(mix.sample(jax.random.PRNGKey(seed), n), np.float64)
  return mean_z, cov_z, weight_z, sliced_wasserstein(x, ref), null_sliced_wasserstein(n)


# Thresholds, in units of Monte-Carlo standard errors. Every run is deterministic (fixed keys); the
# margins cover sampling noise of 2000 samples (|z| < 4 has two-sided probability 6e-5 per entry
# for the mean and weights) plus the discretisation bias at N = 200, which the experiments in
# docs/samplers.md show is below one standard error for the predictors.
MAX_MEAN_Z = 4.0
MAX_COV_Z = 4.5  # 3 covariance entries, each a slightly heavier-tailed statistic than the mean
MAX_WEIGHT_Z = 4.0
# SW^2 to fresh true samples must be no larger than 1.5x the largest of 8 null draws: a new null
# draw exceeds the largest of 8 with probability 1/9, and the null spread (max / median ~ 1.6)
# puts 1.5x max far in its tail. Badly mixed samplers score 3-1000x the null.
SW_MARGIN = 1.5


def assert_matches_mixture(x):
  mean_z, cov_z, weight_z, sw, null = distribution_errors(x)
  assert mean_z.max() < MAX_MEAN_Z, f"mean off by {mean_z} standard errors"
  assert cov_z.max() < MAX_COV_Z, f"covariance off by {cov_z} standard errors"
  assert weight_z.max() < MAX_WEIGHT_Z, f"mixture weights off by {weight_z} standard errors"
  assert sw <= SW_MARGIN * null.max(), f"sliced Wasserstein {sw:.4f} vs null draws {null}"


N_STEPS = 200


def pc_configs(sde):
  """(predictor, corrector, snr, n_steps, probability_flow, N) combinations supported by ``sde``."""
  predictors = ["euler_maruyama", "reverse_diffusion"]
  if not isinstance(sde, sde_lib.SubVPSDE):
    predictors.append("ancestral_sampling")
  configs = [(p, c, 0.16, 1, False, N_STEPS) for p in predictors for c in ("none", "langevin", "ald")]
  # Probability-flow predictors (deterministic after the prior draw). The reverse-diffusion form
  # of the VP ODE has a larger first-order bias (variance off by 5 SE at N = 200, 1.8 SE at 800).
  configs += [("euler_maruyama", "none", 0.16, 1, True, N_STEPS),
              ("reverse_diffusion", "none", 0.16, 1, True, 4 * N_STEPS)]
  # Corrector-only sampling needs several MCMC steps per level to track p_t. The ald rule's step
  # is proportional to std(t)^2, which is smallest for sub-VP, so it needs a larger snr there.
  ald_snr, ald_steps = (0.5, 6) if isinstance(sde, sde_lib.SubVPSDE) else (0.3, 4)
  configs += [("none", "langevin", 0.25, 3, False, N_STEPS),
              ("none", "ald", ald_snr, ald_steps, False, N_STEPS)]
  return configs


def eps_for(sde):
  return 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3


def check_pc(sde, predictor, corrector, snr, n_steps, probability_flow, num_steps):
  sde = dataclasses.replace(sde, N=num_steps)
  x, info = pc.sample_pc(jax.random.PRNGKey(0), isotropic_score_fn(sde), sde, (N_SAMPLES, 2),
                         predictor=predictor, corrector=corrector, snr=snr, n_steps_each=n_steps,
                         probability_flow=probability_flow, eps=eps_for(sde))
  assert x.shape == (N_SAMPLES, 2)
  assert info["nfe"] == sde.N * ((predictor != "none") + (corrector != "none") * n_steps)
  assert_matches_mixture(x)
