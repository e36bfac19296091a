"""Analytic data distributions with exact diffused scores: the oracle for sampler and likelihood tests.

Under any of the linear SDEs, p_0t(x_t | x_0) = N(m(t) x_0, std(t)^2 I). A Gaussian mixture
sum_k w_k N(mu_k, Sigma_k) therefore diffuses to the mixture
  p_t = sum_k w_k N(m(t) mu_k, m(t)^2 Sigma_k + std(t)^2 I),
whose score and log-density are available in closed form at every t.

Distributions act on flat vectors: ``x`` is [B, D].
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from score_sde.diffusion.sde import SDE, ScoreFn

Array = jax.Array


def _mvn_logpdf_and_grad(x: Array, mean: Array, cov: Array) -> tuple[Array, Array]:
  """log N(x; mean, cov) and its gradient in x. x, mean: [..., D]; cov: [..., D, D]."""
  chol = jnp.linalg.cholesky(cov)
  diff = x - mean
  # Solve L y = diff, then L^T u = y, so that u = cov^{-1} diff.
  y = jax.scipy.linalg.solve_triangular(chol, diff[..., None], lower=True)[..., 0]
  u = jax.scipy.linalg.solve_triangular(jnp.swapaxes(chol, -1, -2), y[..., None], lower=False)[..., 0]
  d = x.shape[-1]
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
  logpdf = -0.5 * (d * math.log(2 * math.pi) + log_det + jnp.sum(y**2, axis=-1))
  return logpdf, -u


@struct.dataclass
class GaussianMixture:
  """sum_k weights_k N(means_k, covs_k) in D dimensions."""

  weights: Array  # [K]
  means: Array  # [K, D]
  covs: Array  # [K, D, D]

  @property
  def dim(self) -> int:
    return self.means.shape[-1]

  @property
  def mean(self) -> Array:
    """Mixture mean [D]."""
    return self.weights @ self.means

  @property
  def cov(self) -> Array:
    """Mixture covariance [D, D] (law of total covariance)."""
    centred = self.means - self.mean
    between = jnp.einsum("k,ki,kj->ij", self.weights, centred, centred)
    return jnp.einsum("k,kij->ij", self.weights, self.covs) + between

  def sample(self, key: Array, n: int) -> Array:
    """n samples [n, D]."""
    k_comp, k_noise = jax.random.split(key)
    comp = self.sample_components(k_comp, n)
    return self.sample_given_components(k_noise, comp)

  def sample_components(self, key: Array, n: int) -> Array:
    return jax.random.choice(key, self.weights.shape[0], (n,), p=self.weights)

  def sample_given_components(self, key: Array, comp: Array) -> Array:
    chol = jnp.linalg.cholesky(self.covs)[comp]  # [n, D, D]
    z = jax.random.normal(key, (comp.shape[0], self.dim), dtype=self.means.dtype)
    return self.means[comp] + jnp.einsum("nij,nj->ni", chol, z)

  def component_log_probs(self, x: Array) -> Array:
    """log w_k + log N(x; mu_k, Sigma_k), shape [B, K]."""
    logpdf, _ = _mvn_logpdf_and_grad(x[:, None, :], self.means[None], self.covs[None])
    return jnp.log(self.weights) + logpdf

  def log_prob(self, x: Array) -> Array:
    """log p(x) [B]."""
    return jax.nn.logsumexp(self.component_log_probs(x), axis=-1)

  def responsibilities(self, x: Array) -> Array:
    """Posterior component probabilities p(k | x) [B, K]."""
    return jax.nn.softmax(self.component_log_probs(x), axis=-1)

  # --- the diffused marginal p_t -------------------------------------------------------
  def _marginal_components(self, sde: SDE, t: Array) -> tuple[Array, Array]:
    """Per-sample means [B, K, D] and covariances [B, K, D, D] of p_t at times t [B]."""
    m, std = sde.marginal_params(t)
    means = m[:, None, None] * self.means[None]
    eye = jnp.eye(self.dim, dtype=self.covs.dtype)
    covs = (m**2)[:, None, None, None] * self.covs[None] + (std**2)[:, None, None, None] * eye
    return means, covs

  def marginal_log_prob(self, sde: SDE, x: Array, t: Array) -> Array:
    """log p_t(x) [B] of the data diffused by ``sde`` to times t [B]."""
    return self._marginal_log_prob_and_score(sde, x, t)[0]

  def marginal_score(self, sde: SDE, x: Array, t: Array) -> Array:
    """Exact score grad_x log p_t(x) [B, D]: sum_k p(k | x, t) (-C_k(t)^{-1} (x - m(t) mu_k))."""
    return self._marginal_log_prob_and_score(sde, x, t)[1]

  def _marginal_log_prob_and_score(self, sde, x, t):
    means, covs = self._marginal_components(sde, t)
    logpdf, grads = _mvn_logpdf_and_grad(x[:, None, :], means, covs)  # [B, K], [B, K, D]
    joint = jnp.log(self.weights) + logpdf
    resp = jax.nn.softmax(joint, axis=-1)
    return jax.nn.logsumexp(joint, axis=-1), jnp.einsum("bk,bkd->bd", resp, grads)

  def marginal_log_responsibilities(self, sde: SDE, x: Array, t: Array) -> Array:
    """log p_t(k | x) [B, K]: the exact noise-conditional classifier of the components."""
    means, covs = self._marginal_components(sde, t)
    logpdf, _ = _mvn_logpdf_and_grad(x[:, None, :], means, covs)  # [B, K]
    return jax.nn.log_softmax(jnp.log(self.weights) + logpdf, axis=-1)

  def score_fn(self, sde: SDE) -> ScoreFn:
    """The exact score as a plain ``score_fn(x, t)``, interchangeable with a network's."""
    return lambda x, t: self.marginal_score(sde, x, t)


def gaussian(mean, cov) -> GaussianMixture:
  """A single Gaussian N(mean, cov) as a one-component mixture."""
  mean = jnp.asarray(mean)
  cov = jnp.asarray(cov, dtype=mean.dtype)
  return GaussianMixture(weights=jnp.ones((1,), mean.dtype), means=mean[None], covs=cov[None])


def isotropic_mixture(weights: Sequence[float], means, std: float) -> GaussianMixture:
  """Mixture whose components all have covariance std^2 I."""
  means = jnp.asarray(means)
  k, d = means.shape
  covs = jnp.broadcast_to(std**2 * jnp.eye(d, dtype=means.dtype), (k, d, d))
  weights = jnp.asarray(weights, dtype=means.dtype)
  return GaussianMixture(weights=weights / weights.sum(), means=means, covs=covs)


# --- 2-D shapes for pictures ----------------------------------------------------------------

def ring(n_modes: int = 8, radius: float = 4.0, std: float = 0.3) -> GaussianMixture:
  """Equal-weight Gaussians on a circle."""
  angles = 2 * np.pi * np.arange(n_modes) / n_modes
  means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  return isotropic_mixture(np.ones(n_modes), jnp.asarray(means, jnp.float32), std)


def grid(n_per_side: int = 5, spacing: float = 2.0, std: float = 0.2) -> GaussianMixture:
  """Equal-weight Gaussians on a square grid centred at the origin."""
  ticks = spacing * (np.arange(n_per_side) - (n_per_side - 1) / 2)
  means = np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)
  return isotropic_mixture(np.ones(len(means)), jnp.asarray(means, jnp.float32), std)


def spiral(n_modes: int = 24, turns: float = 1.5, std: float = 0.25) -> GaussianMixture:
  """Gaussians along an Archimedean spiral, weighted by arc position."""
  s = np.linspace(0.15, 1.0, n_modes)
  angle = 2 * np.pi * turns * s
  means = 5.0 * s[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
  return isotropic_mixture(s, jnp.asarray(means, jnp.float32), std)


@struct.dataclass
class Checkerboard:
  """Uniform density on the dark squares of a 4x4 checkerboard on [-4, 4]^2 (no closed-form score)."""

  half_width: float = 4.0

  def sample(self, key: Array, n: int) -> Array:
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), minval=-self.half_width, maxval=self.half_width)
    # Choose a cell in x2 of parity matching x1's cell.
    cell = self.half_width / 2
    col = jnp.floor(x1 / cell)
    row = 2 * jax.random.randint(k2, (n,), -1, 1) + jnp.mod(col, 2)
    x2 = (row + jax.random.uniform(k3, (n,))) * cell
    return jnp.stack([x1, x2], axis=-1)

  def log_prob(self, x: Array) -> Array:
    cell = self.half_width / 2
    idx = jnp.floor(x / cell)
    inside = jnp.all(jnp.abs(x) < self.half_width, axis=-1)
    dark = jnp.mod(idx[:, 0] + idx[:, 1], 2) == 0
    area = (2 * self.half_width) ** 2 / 2
    return jnp.where(inside & dark, -jnp.log(area), -jnp.inf)


SHAPES = {"ring": ring, "grid": grid, "spiral": spiral, "checkerboard": Checkerboard}


def get_shape(name: str):
  """Builds one of the 2-D picture distributions by name."""
  try:
    return SHAPES[name]()
  except KeyError:
    raise ValueError(f"Unknown 2-D shape {name!r}; valid choices are {sorted(SHAPES)}.") from None


# --- inpainting oracles for Gaussian data ------------------------------------------------------

def _split(dim: int, observed: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  observed = np.asarray(observed, dtype=int)
  return np.setdiff1d(np.arange(dim), observed), observed


def gaussian_conditional(mean, cov, observed: Sequence[int], y) -> tuple[np.ndarray, np.ndarray]:
  """Exact p(x_u | x_o = y) of x ~ N(mean, cov): the mean [U] and covariance [U, U] (NumPy, float64)."""
  mean, cov, y = (np.asarray(v, np.float64) for v in (mean, cov, y))
  u, o = _split(len(mean), observed)
  gain = np.linalg.solve(cov[np.ix_(o, o)], cov[np.ix_(o, u)]).T  # [U, O] = S_uo S_oo^-1
  return mean[u] + gain @ (y - mean[o]), cov[np.ix_(u, u)] - gain @ cov[np.ix_(o, u)]


def average_pool_matrix(height: int, width: int, factor: int) -> np.ndarray:
  """A [(H/f)(W/f), H W] of f×f average pooling of a row-major single-channel H×W image (the
  downsampling of super-resolution, SR3 / cascaded diffusion)."""
  h, w = height // factor, width // factor
  a = np.zeros((h * w, height * width))
  for i in range(height):
    for j in range(width):
      a[(i // factor) * w + j // factor, i * width + j] = 1.0 / factor**2
  return a


def linear_gaussian_conditional(mean, cov, a, y) -> tuple[np.ndarray, np.ndarray]:
  """Exact p(x | A x = y) of x ~ N(mean, cov) for a full-row-rank A [M, D]: N(mean + K (y − A mean),
  cov − K A cov) with K = cov Aᵀ (A cov Aᵀ)⁻¹ (NumPy, float64). The covariance is singular (rank
  D − M): the law lives on the affine subspace A x = y."""
  mean, cov, a, y = (np.asarray(v, np.float64) for v in (mean, cov, a, y))
  gain = np.linalg.solve(a @ cov @ a.T, a @ cov).T  # [D, M]
  return mean + gain @ (y - a @ mean), cov - gain @ a @ cov


def replacement_limit(sde: SDE, mean, cov, observed: Sequence[int], y,
                      t_end: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Law of x_u produced by predictor-only replacement inpainting of N(mean, cov), as N -> inf.

  The replacement x_o(t) = m(t) y + std(t) z draws fresh z at each of the N steps; its effect on
  the drift averages out as N grows, so in the limit x_u follows the reverse SDE with the joint
  score evaluated at x_o = m(t) y. With P(t) = (m^2 cov + std^2 I)^-1 that SDE is linear,
    dx_u = [a x_u - g^2 s_u] dt + g dw,  s_u = -P_uu (x_u - m mean_u) - P_uo m (y - mean_o),
  and its mean and covariance solve moment ODEs, integrated here from the prior at T to t_end.
  Comparing with ``gaussian_conditional`` gives the method's bias (docs/controllable.md).
  """
  from scipy.integrate import solve_ivp

  mean, cov, y = (np.asarray(v, np.float64) for v in (mean, cov, y))
  u, o = _split(len(mean), observed)
  n = len(u)

  def rhs(tau, state):
    t = jnp.full((1,), sde.T - tau, jnp.float64)
    m, std = (float(v[0]) for v in sde.marginal_params(t))
    a, g2 = float(sde.drift_coef(t)[0]), float(sde.diffusion_coef(t)[0]) ** 2
    precision = np.linalg.inv(m * m * cov + std * std * np.eye(len(mean)))
    p_uu, p_uo = precision[np.ix_(u, u)], precision[np.ix_(u, o)]
    drift_matrix = -a * np.eye(n) - g2 * p_uu  # d/dtau of x_u, reverse time tau = T - t
    offset = g2 * (p_uu @ (m * mean[u]) - p_uo @ (m * (y - mean[o])))
    mu, sigma = state[:n], state[n:].reshape(n, n)
    d_sigma = drift_matrix @ sigma + sigma @ drift_matrix.T + g2 * np.eye(n)
    return np.concatenate([drift_matrix @ mu + offset, d_sigma.ravel()])

  state0 = np.concatenate([np.zeros(n), (float(sde.prior_std) ** 2 * np.eye(n)).ravel()])
  sol = solve_ivp(rhs, (0.0, sde.T - t_end), state0, method="LSODA", rtol=1e-10, atol=1e-12)
  if not sol.success:
    raise RuntimeError(f"moment ODE failed: {sol.message}")
  final = sol.y[:, -1]
  return final[:n], final[n:].reshape(n, n)
