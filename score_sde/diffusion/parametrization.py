"""Parametrizations of a diffusion model: noise levels, and conversions between predictions.

Every linear SDE of ``sde.py`` has p_0t(x_t | x_0) = N(m(t) x_0, std(t)^2 I). Notation, used with
one meaning throughout the package:

  symbol      name here             meaning
  m(t)        ``m``                 mean scale: x_t = m(t) x_0 + std(t) n, n ~ N(0, I)
  std(t)      ``std``               standard deviation of x_t given x_0
  σ(t)        ``sigma``             noise-to-signal ratio std(t) / m(t) (EDM's σ); for VE it is std(t)
  λ(t)        ``log_snr``           log(m / std) = -log σ (``SDE.log_snr``; half the log-SNR of VDM)
  x_σ         ``x_sigma``           the scaled variable x_t / m(t) = x_0 + σ n (EDM's eq. 4, s(t) = m(t))
  s(x_t, t)   score                 ∇ log p_t(x_t)
  D(x_σ, σ)   ``Denoiser``          E[x_0 | x_σ] (Tweedie: x_σ + σ² ∇_{x_σ} log p_σ, ∇_{x_σ} = m ∇_{x_t})

A sampler accepts either a score function ``score_fn(x_t, t)`` or a ``Denoiser``; the conversions
between them live here and nowhere else:

  * ``data_prediction(model, sde)``  -> x0_fn(x_t, t) = (x_t + std^2 s) / m
  * ``as_denoiser(model, sde)``      -> D(x_σ, σ)
  * ``as_score_fn(model, sde)``      -> score_fn(x_t, t)

Also here: the EDM preconditioning (Karras et al. 2022, Table 1) that wraps any network into a
denoiser.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
from flax import struct
from jax.tree_util import Partial

from score_sde.diffusion.sde import SDE, ScoreFn, batch_broadcast

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


# --- score <-> denoiser <-> data prediction (the one place these conversions live) -----------

@struct.dataclass
class Denoiser:
  """A denoiser D(x_σ, σ) ≈ E[x_0 | x_σ] in the σ parametrisation; samplers accept it wherever they
  accept a score function. Build one from a network with ``get_denoiser``."""

  fn: DenoiserFn

  def __call__(self, x_sigma: Array, sigma: Array) -> Array:
    return self.fn(x_sigma, sigma)


Model = Union[ScoreFn, Denoiser]


def data_prediction(model: Model, sde: SDE) -> Callable[[Array, Array], Array]:
  """x0_fn(x_t [B, ...], t [B]) -> E[x_0 | x_t] = (x_t + std^2 s) / m."""

  def x0_fn(x, t):
    m, std = sde.marginal_params(t)
    m_b, std_b = batch_broadcast(m, x), batch_broadcast(std, x)
    if isinstance(model, Denoiser):
      return model(x / m_b, std / m)
    return (x + std_b**2 * model(x, t)) / m_b

  return x0_fn


def as_denoiser(model: Model, sde: SDE) -> DenoiserFn:
  """D(x_σ [B, ...], σ [B]) = x_σ + σ^2 m s(m x_σ, t(σ)) for a score; a Denoiser passes through."""
  if isinstance(model, Denoiser):
    return model
  x0_fn = data_prediction(model, sde)

  def denoise(x_sigma, sigma):
    t = t_of_sigma(sde, sigma)
    m, _ = sde.marginal_params(t)
    return x0_fn(batch_broadcast(m, x_sigma) * x_sigma, t)

  return denoise


def as_score_fn(model: Model, sde: SDE) -> ScoreFn:
  """score_fn(x_t, t) = (m D(x_t / m, σ) - x_t) / std^2 for a Denoiser; a score passes through."""
  if not isinstance(model, Denoiser):
    return model
  x0_fn = data_prediction(model, sde)

  def score_fn(x, t):
    m, std = sde.marginal_params(t)
    return (batch_broadcast(m, x) * x0_fn(x, t) - x) / batch_broadcast(std**2, x)

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
  ``D(params, x_σ, σ, train=, rng=) = c_skip x_σ + c_out F(c_in x_σ, c_noise)`` (eq. 7)."""

  def denoiser_fn(params, x_sigma, sigma, train: bool = False, rng: Optional[Array] = None):
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    out = model_fn(params, batch_broadcast(c_in, x_sigma) * x_sigma, c_noise, train=train, rng=rng)
    return batch_broadcast(c_skip, x_sigma) * x_sigma + batch_broadcast(c_out, x_sigma) * out

  return denoiser_fn


def get_denoiser(model_fn: Callable, params, *, sigma_data: float = 0.5, train: bool = False,
                 rng: Optional[Array] = None) -> Denoiser:
  """The preconditioned network with fixed params as a ``Denoiser`` for the samplers."""
  denoiser_fn = precondition(model_fn, sigma_data)
  return Denoiser(fn=Partial(lambda p, x, s: denoiser_fn(p, x, s, train=train, rng=rng), params))
