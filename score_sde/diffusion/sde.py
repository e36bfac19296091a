"""Forward SDEs of "Score-Based Generative Modeling through SDEs" (Song et al., ICLR 2021).

Each SDE is an immutable pytree (a ``flax.struct`` dataclass) of pure methods that work under
``jit``, ``vmap`` and ``grad``. Shapes: ``x`` is batched ``[B, ...]`` and ``t`` is ``[B]``.

The SDE also owns its *score parametrization*: how time becomes a network's noise label
(``noise_labels``) and how a network's output becomes a score (``score_from_output``), for
continuous and discrete training (as the reference implementation).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Optional

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]  # (x [B, ...], t [B]) -> score [B, ...]


def batch_broadcast(v: Array, x: Array) -> Array:
  """Reshapes a per-sample quantity ``v`` [B] so it broadcasts against ``x`` [B, ...]."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def _sum_except_batch(x: Array) -> Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


class SDE:
  """Shared behaviour of the forward SDEs dx = f(x, t) dt + g(t) dw on t in [0, T].

  Subclasses define ``marginal_params``, ``drift_coef``, ``diffusion_coef`` and
  ``prior_std`` and may override ``discretize``.
  """

  T: ClassVar[float] = 1.0
  N: int
  # Name of the discrete-time loss this SDE supports (see ``losses.py``), or None.
  discrete_loss: ClassVar[Optional[str]] = None
  # Smallest time of sampling (and of the likelihood solve's default), as the reference.
  default_eps: ClassVar[float] = 1e-3

  # --- schedule -------------------------------------------------------------------------
  def marginal_params(self, t: Array) -> tuple[Array, Array]:
    """Returns (m(t), std(t)), both [B], with p_0t(x_t | x_0) = N(m(t) x_0, std(t)^2 I)."""
    raise NotImplementedError

  def drift_coef(self, t: Array) -> Array:
    """The linear drift coefficient a(t) [B] with f(x, t) = a(t) x."""
    raise NotImplementedError

  def diffusion_coef(self, t: Array) -> Array:
    """g(t), shape [B]."""
    raise NotImplementedError

  prior_std: ClassVar[float] = 1.0

  # --- public interface (names follow the reference implementation) ----------------------
  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift f(x, t) [B, ...] and diffusion g(t) [B] of the forward SDE."""
    return batch_broadcast(self.drift_coef(t), x) * x, self.diffusion_coef(t)

  def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Mean [B, ...] and std [B] of the perturbation kernel p_0t(x_t | x_0 = x)."""
    m, std = self.marginal_params(t)
    return batch_broadcast(m, x) * x, std

  def prior_sampling(self, key: Array, shape) -> Array:
    """Draws x_T from the prior N(0, prior_std^2 I)."""
    return self.prior_std * jax.random.normal(key, shape)

  def prior_logp(self, z: Array) -> Array:
    """log N(z; 0, prior_std^2 I) per sample, shape [B]."""
    d = z[0].size
    var = self.prior_std**2
    return -0.5 * d * jnp.log(2 * jnp.pi * var) - _sum_except_batch(z**2) / (2 * var)

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """One step x_{i+1} = x_i + f_i + G_i z_i. Default: Euler-Maruyama with dt = T / N."""
    dt = self.T / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def time_to_index(self, t: Array) -> Array:
    """Discrete step index int(t (N - 1) / T) (truncation), shape [B] int32."""
    return (t * (self.N - 1) / self.T).astype(jnp.int32)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (eq. 6) or, with ``probability_flow``, the probability-flow ODE (eq. 13)."""
    return ReverseSDE(forward=self, score_fn=score_fn, probability_flow=probability_flow)

  # --- score parametrization -------------------------------------------------------------
  def noise_labels(self, t: Array, continuous: bool) -> Array:
    """The noise label fed to the network at time t [B] (as the reference implementation)."""
    raise NotImplementedError

  def score_from_output(self, output: Array, t: Array, continuous: bool) -> Array:
    """Turns a network output [B, ...] at time t [B] into a score estimate."""
    raise NotImplementedError

  # --- derived quantities used by samplers and losses ------------------------------------
  def log_snr(self, t: Array) -> Array:
    """lambda(t) = log(m(t) / std(t)), decreasing in t."""
    m, std = self.marginal_params(t)
    return jnp.log(m) - jnp.log(std)

  def check_discretization(self) -> None:
    """Raises ValueError when the N-level discretization used by the PC steps is not a valid
    Markov chain (checked when the schedule is concrete)."""

  def langevin_step_scale(self, t: Array) -> Array:
    """alpha_i [B] of the Langevin step sizes e = 2 alpha_i (...)^2 (Algorithms 4-5)."""
    raise ValueError(f"Langevin correctors need a step-size rule alpha_i, which "
                     f"{type(self).__name__} does not define.")

  def ancestral_step(self, x: Array, t: Array, score: Array) -> tuple[Array, Array]:
    """One step of the SDE's discrete Markov chain p(x_{i-1} | x_i) (Appendix F).

    Returns (x_mean [B, ...], noise_std [B]) with x_{i-1} = x_mean + noise_std z.
    """
    raise ValueError(f"ancestral_sampling is defined only for SDEs with a discrete Markov chain "
                     f"(VESDE: SMLD, VPSDE: DDPM), not {type(self).__name__}; use "
                     f"predictor='reverse_diffusion' or 'euler_maruyama'.")


def _score_from_noise(eps: Array, std: Array) -> Array:
  # parametrization.py builds on this module, so it is imported when first needed.
  from score_sde.diffusion.parametrization import score_from_noise
  return score_from_noise(eps, std)


def _reverse_coefs(probability_flow: bool) -> tuple[float, float]:
  # (weight of g^2 s in the drift, multiplier of the diffusion)
  return (0.5, 0.0) if probability_flow else (1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """Reverse-time SDE dx = [f - g^2 s] dt + g dw (or the ODE with f - g^2 s / 2 and no noise).

  Has the same ``sde``/``discretize`` interface as the forward SDE.
  """

  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  @property
  def N(self) -> int:
    return self.forward.N

  @property
  def T(self) -> float:
    return self.forward.T

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    drift, diffusion = self.forward.sde(x, t)
    w, gmul = _reverse_coefs(self.probability_flow)
    score = self.score_fn(x, t)
    drift = drift - w * batch_broadcast(diffusion**2, x) * score
    return drift, gmul * diffusion

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Reverse discretization: rev_f = f - G^2 s (G^2 s / 2 for the ODE), rev_G = G (0 for the ODE)."""
    f, G = self.forward.discretize(x, t)
    w, gmul = _reverse_coefs(self.probability_flow)
    rev_f = f - w * batch_broadcast(G**2, x) * self.score_fn(x, t)
    return rev_f, gmul * G


@struct.dataclass
class VESDE(SDE):
  """Variance-exploding SDE (eq. 30): sigma(t) = sigma_min (sigma_max / sigma_min)^t, f = 0."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = struct.field(pytree_node=False, default=1000)

  discrete_loss: ClassVar[str] = "smld"
  default_eps: ClassVar[float] = 1e-5  # smallest sampling time of the reference

  @property
  def prior_std(self):  # type: ignore[override]
    return self.sigma_max

  def sigma(self, t: Array) -> Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  @property
  def discrete_sigmas(self) -> Array:
    """sigma_i = exp(linspace(ln sigma_min, ln sigma_max, N)), ascending, [N]."""
    return jnp.exp(jnp.linspace(jnp.log(self.sigma_min), jnp.log(self.sigma_max), self.N))

  def marginal_params(self, t):
    return jnp.ones_like(t), self.sigma(t)

  def drift_coef(self, t):
    return jnp.zeros_like(t)

  def diffusion_coef(self, t):
    return self.sigma(t) * jnp.sqrt(2 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))

  def discretize(self, x, t):
    """SMLD: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2) with sigma_{-1} = 0."""
    i = self.time_to_index(t)
    sigmas = self.discrete_sigmas
    sigma = sigmas[i]
    adjacent = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)

  def langevin_step_scale(self, t):
    return jnp.ones_like(t)

  def ancestral_step(self, x, t, score):
    """SMLD: x_mean = x + (sigma_i^2 - sigma_{i-1}^2) s,
    noise std sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2), sigma_{-1} = 0."""
    i = self.time_to_index(t)
    sigmas = self.discrete_sigmas
    sigma = sigmas[i]
    sigma_prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    var_step = sigma**2 - sigma_prev**2
    x_mean = x + batch_broadcast(var_step, x) * score
    return x_mean, jnp.sqrt(sigma_prev**2 * var_step / sigma**2)

  def noise_labels(self, t, continuous):
    if continuous:
      return self.sigma(t)
    # Index into the descending table flip(discrete_sigmas), as NCSN/NCSNv2 expect.
    return jnp.round((self.T - t) * (self.N - 1)).astype(jnp.int32)

  def score_from_output(self, output, t, continuous):
    del t, continuous  # VE networks output the score (NCSN++ divides by sigma itself).
    return output


class _VPFamily(SDE):
  """Shared schedule of the VP and sub-VP SDEs: beta(t) = beta_0 + t (beta_1 - beta_0)."""

  beta_min: float
  beta_max: float

  def beta(self, t: Array) -> Array:
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t: Array) -> Array:
    """log m(t) = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2."""
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def drift_coef(self, t):
    return -0.5 * self.beta(t)

  def check_discretization(self):
    """The discrete beta_i = linspace(beta_0 / N, beta_1 / N, N) must stay below 1."""
    if isinstance(self.beta_max, jax.core.Tracer):
      return
    if float(self.beta_max) / self.N >= 1.0:
      raise ValueError(f"{type(self).__name__}(N={self.N}, beta_max={self.beta_max}): the discrete "
                       f"beta_N = beta_max / N = {float(self.beta_max) / self.N:.3g} >= 1 makes every "
                       "reverse-diffusion, ancestral or Langevin step NaN. Use N > beta_max (the "
                       "reference uses N = 1000), or predictor='euler_maruyama' with corrector='none'.")

  def langevin_step_scale(self, t):
    """alpha_i = 1 - beta_i with beta_i = linspace(beta_0 / N, beta_1 / N, N)[i] (VP and sub-VP)."""
    i = self.time_to_index(t).astype(t.dtype)
    return 1.0 - (self.beta_min + i / (self.N - 1) * (self.beta_max - self.beta_min)) / self.N

  def noise_labels(self, t, continuous):
    del continuous
    return 999.0 * t

  def score_from_output(self, output, t, continuous):
    """The network predicts the noise ε: s = -ε / std(t)."""
    del continuous
    return _score_from_noise(output, batch_broadcast(self.marginal_params(t)[1], output))


@struct.dataclass
class VPSDE(_VPFamily):
  """Variance-preserving SDE (eq. 32), the continuous limit of DDPM."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = struct.field(pytree_node=False, default=1000)

  discrete_loss: ClassVar[str] = "ddpm"

  @property
  def discrete_betas(self) -> Array:
    return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

  @property
  def alphas(self) -> Array:
    return 1.0 - self.discrete_betas

  @property
  def alphas_cumprod(self) -> Array:
    return jnp.cumprod(self.alphas)

  @property
  def sqrt_alphas_cumprod(self) -> Array:
    return jnp.sqrt(self.alphas_cumprod)

  @property
  def sqrt_1m_alphas_cumprod(self) -> Array:
    return jnp.sqrt(1.0 - self.alphas_cumprod)

  def marginal_params(self, t):
    log_m = self.log_mean_coeff(t)
    return jnp.exp(log_m), jnp.sqrt(-jnp.expm1(2.0 * log_m))

  def ancestral_step(self, x, t, score):
    """DDPM: x_mean = (x + beta_i s) / sqrt(1 - beta_i), noise std sqrt(beta_i)."""
    beta = self.discrete_betas[self.time_to_index(t)]
    x_mean = (x + batch_broadcast(beta, x) * score) / batch_broadcast(jnp.sqrt(1.0 - beta), x)
    return x_mean, jnp.sqrt(beta)

  def diffusion_coef(self, t):
    return jnp.sqrt(self.beta(t))

  def discretize(self, x, t):
    """DDPM: f = sqrt(alpha_i) x - x, G = sqrt(beta_i)."""
    i = self.time_to_index(t)
    beta = self.discrete_betas[i]
    alpha = self.alphas[i]
    return batch_broadcast(jnp.sqrt(alpha), x) * x - x, jnp.sqrt(beta)

  def noise_labels(self, t, continuous):
    if continuous:
      return 999.0 * t
    return t * (self.N - 1)

  def score_from_output(self, output, t, continuous):
    if continuous:
      std = self.marginal_params(t)[1]
    else:
      std = self.sqrt_1m_alphas_cumprod[self.noise_labels(t, False).astype(jnp.int32)]
    return _score_from_noise(output, batch_broadcast(std, output))


@struct.dataclass
class SubVPSDE(_VPFamily):
  """Sub-VP SDE (eq. 34): VP drift, g^2 = beta(t) (1 - exp(-2 beta_0 t - (beta_1 - beta_0) t^2))."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = struct.field(pytree_node=False, default=1000)

  def marginal_params(self, t):
    log_m = self.log_mean_coeff(t)
    return jnp.exp(log_m), -jnp.expm1(2.0 * log_m)

  def diffusion_coef(self, t):
    discount = -jnp.expm1(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
    return jnp.sqrt(self.beta(t) * discount)


@struct.dataclass
class RectifiedFlow(SDE):
  """Rectified flow (Liu et al., ICLR 2023): the straight path x_t = (1 - t) x_0 + t z, t = 0 data.

  m(t) = 1 - t and std(t) = t; an SDE with these marginals has f(x, t) = -x / (1 - t) and
  g(t)^2 = 2 t / (1 - t) (dm/dt = f m, d std^2/dt = 2 f std^2 + g^2), prior N(0, I). At t = 1 the
  mean vanishes and f, g blow up, so the process stops at T < 1, a static field in (0, 1). The
  network predicts the noise as for VP (labels 999 t) unless trained with the 'flow_matching'
  objective (``parametrization.get_velocity_score_fn``). The reference code (gnobitab/RectifiedFlow)
  runs time the other way: its t = 1 is the data, and its network sees 999 t.
  """

  T: float = struct.field(pytree_node=False, default=1.0 - 1e-3)
  N: int = struct.field(pytree_node=False, default=1000)

  def __post_init__(self):
    if not 0.0 < self.T < 1.0:
      raise ValueError(f"RectifiedFlow needs 0 < T < 1 (m(1) = 0 and the drift -x / (1 - t) is "
                       f"infinite at t = 1); got T={self.T}.")

  def marginal_params(self, t):
    return 1.0 - t, t

  def drift_coef(self, t):
    return -1.0 / (1.0 - t)

  def diffusion_coef(self, t):
    return jnp.sqrt(2.0 * t / (1.0 - t))

  def langevin_step_scale(self, t):
    return jnp.ones_like(t)

  def noise_labels(self, t, continuous):
    del continuous
    return 999.0 * t

  def score_from_output(self, output, t, continuous):
    """The network predicts the noise ε: s = -ε / t."""
    del continuous
    return _score_from_noise(output, batch_broadcast(t, output))


SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": SubVPSDE, "rectified_flow": RectifiedFlow}


def get_score_fn(sde: SDE, model_fn: Callable, params, *, continuous: bool, train: bool = False,
                 rng: Optional[Array] = None, class_labels: Optional[Array] = None) -> ScoreFn:
  """Wraps a network ``model_fn(params, x, labels, train=, rng=)`` as ``score_fn(x, t)``.

  The returned callable is the public form every sampler and the likelihood take. A
  class-conditional network gets ``class_labels`` int [B] (the null class for its unconditional
  score); they are passed as ``model_fn(..., class_labels=)`` only when given.
  """
  class_kw = {} if class_labels is None else {"class_labels": class_labels}

  def score_fn(x: Array, t: Array) -> Array:
    output = model_fn(params, x, sde.noise_labels(t, continuous), train=train, rng=rng, **class_kw)
    return sde.score_from_output(output, t, continuous)

  return score_fn
