"""Parametrizations of a diffusion model: noise levels, and conversions between predictions.

Every SDE of ``sde.py`` has p_0t(x_t | x_0) = N(m(t) x_0, std(t)^2 I). Notation, one meaning each
throughout the package (DPM-Solver's α_t and σ_t are written m_t and std_t there):

  symbol     name here    meaning
  m, std     ``m, std``   x_t = m(t) x_0 + std(t) ε, ε ~ N(0, I) (``SDE.marginal_params``)
  m', std'   ``dm, dstd`` their time derivatives (``marginal_coefficients``, by ``jax.jvp``)
  σ          ``sigma``    std / m, EDM's noise level (Karras et al. 2022, eq. 4 with s = m)
  λ          ``log_snr``  log(m / std) = -log σ (``SDE.log_snr``)
  x_σ        ``x_sigma``  x_t / m = x_0 + σ ε
  s          score        ∇ log p_t(x_t)
  x̂_0        data         E[x_0 | x_t] = (x_t + std² s) / m (Tweedie)
  ε̂          noise        E[ε | x_t] = -std s
  v̂          velocity     E[dx_t/dt | x_t] = m' x̂_0 + std' ε̂, the probability-flow drift f - g² s / 2
                          (rectified flow, m = 1 - t, std = t: E[ε - x_0 | x_t], Liu et al. 2022)
  D(x_σ, σ)  ``Denoiser`` x̂_0 as a function of (x_σ, σ)

The conversions between these predictions are written once, below, as pure functions of x_t and
the coefficients at t; ``data_prediction``, ``noise_prediction``, ``velocity_prediction`` and
``as_score_fn`` turn a model (a score function ``score_fn(x_t, t)`` or a ``Denoiser``) into the
prediction wanted, as a function of (x_t, t); the EDM, DDIM, DPM-Solver, adaptive and interpolation
samplers take either model through them. Also here: the EDM preconditioning
(Karras et al. 2022, Table 1) that wraps a network into a ``Denoiser``, and ``sampling_model``, the
sampler-ready model of each training objective of ``losses.py``.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
from flax import struct
from jax.tree_util import Partial

from score_sde.diffusion.sde import SDE, ScoreFn, batch_broadcast, get_score_fn

Array = jax.Array
DenoiserFn = Callable[[Array, Array], Array]  # (x_sigma [B, ...], sigma [B]) -> x0 estimate [B, ...]


# --- time <-> noise level -------------------------------------------------------------------

def sigma_of_t(sde: SDE, t: Array) -> Array:
  """σ(t) = std(t) / m(t) = exp(-λ(t)), any shape."""
  m, std = sde.marginal_params(t)
  return std / m


def t_of_log_snr(sde: SDE, lam: Array, t_max: Optional[float] = None) -> Array:
  """Inverse of λ(t) = log(m / std) by bisection on device (λ is strictly decreasing in t).

  Works for any SDE of ``sde.py`` without per-class code. 64 halvings of [0, t_max] reach float64
  resolution. λ outside [λ(t_max), λ(0)] clamps to the end of the bracket. t_max defaults to
  2 T so that a churned σ slightly above σ(T) (EDM Algorithm 2) still maps to a time.
  """
  lam = jnp.asarray(lam)
  t_max = 2.0 * sde.T if t_max is None else t_max
  lo = jnp.zeros_like(lam)
  hi = jnp.full_like(lam, t_max)

  def halve(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    right = sde.log_snr(mid) > lam  # λ(mid) still too large: the root is later
    return jnp.where(right, mid, lo), jnp.where(right, hi, mid)

  lo, hi = jax.lax.fori_loop(0, 64, halve, (lo, hi))
  return 0.5 * (lo + hi)


def t_of_sigma(sde: SDE, sigma: Array) -> Array:
  """Inverse of σ(t) = std / m."""
  return t_of_log_snr(sde, -jnp.log(sigma))


# --- conversions at one (x_t, t); m, std, dm, dstd broadcast against x [B, ...] -------------

def data_from_score(x: Array, score: Array, m: Array, std: Array) -> Array:
  """x̂_0 = (x_t + std² s) / m (Tweedie's formula)."""
  return (x + std**2 * score) / m


def score_from_data(x: Array, x0: Array, m: Array, std: Array) -> Array:
  """s = (m x̂_0 - x_t) / std²."""
  return (m * x0 - x) / std**2


def noise_from_score(score: Array, std: Array) -> Array:
  """ε̂ = -std s."""
  return -std * score


def score_from_noise(eps: Array, std: Array) -> Array:
  """s = -ε̂ / std (Ho et al. 2020's ε-network as a score)."""
  return -eps / std


def data_from_noise(x: Array, eps: Array, m: Array, std: Array) -> Array:
  """x̂_0 = (x_t - std ε̂) / m."""
  return (x - std * eps) / m


def noise_from_data(x: Array, x0: Array, m: Array, std: Array) -> Array:
  """ε̂ = (x_t - m x̂_0) / std."""
  return (x - m * x0) / std


def velocity_from_noise(x: Array, eps: Array, m: Array, std: Array, dm: Array,
                        dstd: Array) -> Array:
  """v̂ = m' x̂_0 + std' ε̂, the flow-matching velocity dx_t/dt of x_t = m x_0 + std ε given x_t
  (rectified flow, m = 1 - t, std = t: v = ε - x_0)."""
  return dm * data_from_noise(x, eps, m, std) + dstd * eps


def noise_from_velocity(x: Array, v: Array, m: Array, std: Array, dm: Array,
                        dstd: Array) -> Array:
  """ε̂ from x_t = m x̂_0 + std ε̂ and v̂ = m' x̂_0 + std' ε̂: (m v̂ - m' x_t) / (m std' - std m'); the
  determinant m std' - std m' = m² dσ/dt is positive."""
  return (m * v - dm * x) / (m * dstd - std * dm)


def data_from_velocity(x: Array, v: Array, m: Array, std: Array, dm: Array,
                       dstd: Array) -> Array:
  """x̂_0 = (std' x_t - std v̂) / (m std' - std m'), from x_t = m x̂_0 + std ε̂ and
  v̂ = m' x̂_0 + std' ε̂ (rectified flow: x̂_0 = x_t - t v̂)."""
  return (dstd * x - std * v) / (m * dstd - std * dm)


def score_from_velocity(x: Array, v: Array, m: Array, std: Array, dm: Array,
                        dstd: Array) -> Array:
  """s = -ε̂ / std with ε̂ = ``noise_from_velocity``
  (rectified flow: s = -(x_t + (1 - t) v̂) / t)."""
  return score_from_noise(noise_from_velocity(x, v, m, std, dm, dstd), std)


def marginal_coefficients(sde: SDE, t: Array) -> tuple[Array, Array, Array, Array]:
  """(m, std, m', std') at t [B], the derivatives by forward-mode differentiation."""
  (m, std), (dm, dstd) = jax.jvp(sde.marginal_params, (t,), (jnp.ones_like(t),))
  return m, std, dm, dstd


# --- models as (x_t, t) -> prediction ---------------------------------------------------------

@struct.dataclass
class Denoiser:
  """A denoiser D(x_σ, σ) ≈ E[x_0 | x_σ] in the σ parametrisation. The EDM, DDIM, DPM-Solver,
  adaptive and interpolation samplers take it in place of a score function; ``as_score_fn`` makes a
  score function of it for the others. Build one from a network with ``get_denoiser``."""

  fn: DenoiserFn

  def __call__(self, x_sigma: Array, sigma: Array) -> Array:
    return self.fn(x_sigma, sigma)


Model = Union[ScoreFn, Denoiser]


def sigma_inputs(sde: SDE, x: Array, t: Array) -> tuple[Array, Array]:
  """(x_σ = x_t / m [B, ...], σ = std / m [B]): the same kind of input under every SDE."""
  m, std = sde.marginal_params(t)
  return x / batch_broadcast(m, x), std / m


def checked_output(out: Array, x: Array, kind: str) -> Array:
  """``out``, after checking (at trace time) that a model's output has its input's shape [B, ...];
  a broadcasting output such as [1, H, W, C] would otherwise give silently wrong samples."""
  if out.shape != x.shape:
    raise ValueError(f"The {kind} returned shape {out.shape} for an input of shape {x.shape}; it must "
                     "return one value per input entry (same shape as x).")
  return out


def data_prediction(model: Model, sde: SDE) -> Callable[[Array, Array], Array]:
  """x0_fn(x_t [B, ...], t [B]) -> x̂_0."""

  def x0_fn(x, t):
    if isinstance(model, Denoiser):
      return checked_output(model(*sigma_inputs(sde, x, t)), x, "denoiser")
    m, std = sde.marginal_params(t)
    score = checked_output(model(x, t), x, "score function")
    return data_from_score(x, score, batch_broadcast(m, x), batch_broadcast(std, x))

  return x0_fn


def noise_prediction(model: Model, sde: SDE) -> Callable[[Array, Array], Array]:
  """eps_fn(x_t [B, ...], t [B]) -> ε̂."""
  x0_fn = data_prediction(model, sde)

  def eps_fn(x, t):
    m, std = sde.marginal_params(t)
    return noise_from_data(x, x0_fn(x, t), batch_broadcast(m, x), batch_broadcast(std, x))

  return eps_fn


def velocity_prediction(model: Model, sde: SDE) -> Callable[[Array, Array], Array]:
  """v_fn(x_t [B, ...], t [B]) -> v̂ = m' x̂_0 + std' ε̂ (equal to the probability-flow drift)."""
  eps_fn = noise_prediction(model, sde)

  def v_fn(x, t):
    coefs = [batch_broadcast(c, x) for c in marginal_coefficients(sde, t)]
    return velocity_from_noise(x, eps_fn(x, t), *coefs)

  return v_fn


def as_denoiser(model: Model, sde: SDE) -> DenoiserFn:
  """D(x_σ [B, ...], σ [B]) = x̂_0(m x_σ, t(σ)); a Denoiser passes through."""
  if isinstance(model, Denoiser):
    return model
  x0_fn = data_prediction(model, sde)

  def denoise(x_sigma, sigma):
    t = t_of_sigma(sde, sigma)
    m, _ = sde.marginal_params(t)
    return x0_fn(batch_broadcast(m, x_sigma) * x_sigma, t)

  return denoise


def as_score_fn(model: Model, sde: SDE) -> ScoreFn:
  """score_fn(x_t, t) = (m D(x_t / m, σ) - x_t) / std² for a Denoiser; a score passes through."""
  if not isinstance(model, Denoiser):
    return lambda x, t: checked_output(model(x, t), x, "score function")
  x0_fn = data_prediction(model, sde)

  def score_fn(x, t):
    m, std = sde.marginal_params(t)
    return score_from_data(x, x0_fn(x, t), batch_broadcast(m, x), batch_broadcast(std, x))

  return score_fn


# --- EDM preconditioning (Table 1, eq. 7) -----------------------------------------------------

def preconditioning(sigma: Array, sigma_data: float = 0.5) -> tuple[Array, Array, Array, Array]:
  """EDM Table 1: (c_skip, c_out, c_in, c_noise), each shaped like σ."""
  var = sigma**2 + sigma_data**2
  c_skip = sigma_data**2 / var
  c_out = sigma * sigma_data / jnp.sqrt(var)
  c_in = 1.0 / jnp.sqrt(var)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def precondition(model_fn: Callable, sigma_data: float = 0.5) -> Callable:
  """Wraps any network ``model_fn(params, x, labels, train=, rng=)`` as the EDM denoiser
  ``D(params, x_σ, σ, train=, rng=, class_labels=) = c_skip x_σ + c_out F(c_in x_σ, c_noise)``
  (eq. 7). ``class_labels`` int [B] reach a class-conditional network only when given."""

  def denoiser_fn(params, x_sigma, sigma, train: bool = False, rng: Optional[Array] = None,
                  class_labels: Optional[Array] = None):
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    class_kw = {} if class_labels is None else {"class_labels": class_labels}
    out = model_fn(params, batch_broadcast(c_in, x_sigma) * x_sigma, c_noise, train=train, rng=rng,
                   **class_kw)
    return batch_broadcast(c_skip, x_sigma) * x_sigma + batch_broadcast(c_out, x_sigma) * out

  return denoiser_fn


def get_denoiser(model_fn: Callable, params, *, sigma_data: float = 0.5, train: bool = False,
                 rng: Optional[Array] = None, class_labels: Optional[Array] = None) -> Denoiser:
  """The preconditioned network with fixed params (and class labels) as a ``Denoiser``."""
  denoiser_fn = precondition(model_fn, sigma_data)
  return Denoiser(fn=Partial(
      lambda p, x, s: denoiser_fn(p, x, s, train=train, rng=rng, class_labels=class_labels),
      params))


# --- the network of a training objective as a sampler-ready model -----------------------------

def get_velocity_score_fn(sde: SDE, model_fn: Callable, params, *,
                          class_labels: Optional[Array] = None) -> ScoreFn:
  """Wraps a velocity network ``model_fn(params, x, labels, train=, rng=)`` (the 'flow_matching'
  objective, labels = ``sde.noise_labels(t, True)``) as ``score_fn(x, t)`` by
  ``score_from_velocity``. ``class_labels`` int [B] reach the network only when given."""
  class_kw = {} if class_labels is None else {"class_labels": class_labels}

  def score_fn(x: Array, t: Array) -> Array:
    v = checked_output(model_fn(params, x, sde.noise_labels(t, True), train=False, rng=None,
                                **class_kw), x, "velocity network")
    coefs = [batch_broadcast(c, x) for c in marginal_coefficients(sde, t)]
    return score_from_velocity(x, v, *coefs)

  return score_fn


SCORE_OBJECTIVES = (None, "dsm", "smld", "ddpm")


CONSISTENCY_OBJECTIVES = ("consistency_distillation", "consistency_training",
                          "improved_consistency_training")


def sampling_model(objective: Optional[str], sde: SDE, model_fn: Callable, params, *,
                   continuous: bool, sigma_data: float = 0.5, sigma_min: float = 0.002,
                   class_labels: Optional[Array] = None) -> Model:
  """The network trained with ``objective`` (a key of ``losses.OBJECTIVES``, None for the default)
  as a model the samplers take: a score function (``sde.get_score_fn``, the SDE's output
  parametrization) for 'dsm', 'smld' and 'ddpm'; the EDM-preconditioned ``Denoiser`` for 'edm';
  the score of a velocity network (``get_velocity_score_fn``, continuous labels) for
  'flow_matching'; the consistency function f_θ (a ``Denoiser``, boundary ``sigma_min``) of a
  consistency objective."""
  if objective in CONSISTENCY_OBJECTIVES:
    from score_sde.diffusion import consistency  # it builds on this module

    return consistency.get_consistency_model(model_fn, params, sigma_data=sigma_data,
                                             sigma_min=sigma_min, class_labels=class_labels)
  if objective == "edm":
    return get_denoiser(model_fn, params, sigma_data=sigma_data, class_labels=class_labels)
  if objective == "flow_matching":
    return get_velocity_score_fn(sde, model_fn, params, class_labels=class_labels)
  if objective in SCORE_OBJECTIVES:
    return get_score_fn(sde, model_fn, params, continuous=continuous, class_labels=class_labels)
  raise ValueError(f"Unknown objective {objective!r}; valid choices are "
                   f"{sorted(o for o in SCORE_OBJECTIVES if o)}, 'edm' and 'flow_matching'.")
