"""EDM: "Elucidating the Design Space of Diffusion-Based Generative Models" (Karras et al., NeurIPS 2022).

The σ parametrisation. Every linear SDE of ``sde.py`` has p_0t(x_t | x_0) = N(m(t) x_0, std(t)^2 I).
With σ(t) = std(t) / m(t) = exp(-λ(t)) and x_σ = x_t / m(t), the scaled variable is x_σ = x_0 + σ n,
the variance-exploding form of EDM (their eq. 4 with s(t) = m(t)). This module holds the
conversions between the project's score ``score_fn(x_t, t)`` and a denoiser D(x_σ, σ) ≈ E[x_0 | x_σ]
(Tweedie: D = x_σ + σ^2 ∇ log p_σ(x_σ), and ∇_{x_σ} log p_σ = m ∇_{x_t} log p_t), written once here
and reused by ``ddim.py``, ``dpm_solver.py`` and ``interpolation.py``:

  * ``data_prediction(model, sde)``  -> x0_fn(x_t, t) = (x_t + std^2 s) / m
  * ``as_denoiser(model, sde)``      -> D(x_σ, σ)
  * ``as_score_fn(model, sde)``      -> score_fn(x_t, t)

where ``model`` is either a plain score function or a ``Denoiser``. Also here: the preconditioning
(Table 1: c_skip, c_out, c_in, c_noise) that wraps any network into a denoiser, the EDM loss
(eq. 2, 8 with log-normal σ and λ(σ)), the ρ = 7 schedule (eq. 5) and the Heun sampler with optional
churn (Algorithm 2), and the per-sample randomness helpers shared by the samplers of this package.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import struct
from jax.tree_util import Partial

from score_sde.samplers import sampling
from score_sde.diffusion.sde import SDE, ScoreFn, batch_broadcast

sample_keys = sampling.sample_keys

Array = jax.Array
DenoiserFn = Callable[[Array, Array], Array]  # (x_sigma [B, ...], sigma [B]) -> x0 estimate [B, ...]


# --- per-sample randomness (the conventions of ``sampling.py``) -------------------------------

def per_sample_normal(keys: Array, step, shape: Sequence[int], dtype) -> Array:
  """Standard normal [B, ...]: row b drawn from fold_in(keys[b], step)."""
  draw = lambda k: jax.random.normal(jax.random.fold_in(k, step), tuple(shape[1:]), dtype)
  return jax.vmap(draw)(keys)


def prior_sample(keys: Array, sde: SDE, shape: Sequence[int], dtype) -> Array:
  """x_T ~ prior [B, ...], row b from fold_in(keys[b], 0) exactly as ``sampling.sample_ode`` draws it;
  step i then uses fold_in(keys[b], i + 1)."""
  return sampling.per_sample_prior(sampling.fold_in_all(keys, 0), sde, shape, dtype)


def as_traceable(model):
  """``sampling.as_traceable`` that also accepts a ``Denoiser`` (its function made traceable)."""
  if isinstance(model, Denoiser):
    return Denoiser(fn=sampling.as_traceable(model.fn))
  return sampling.as_traceable(model)


def check_shape(shape) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"shape must be (batch, ...) with positive sizes, e.g. (64, 2); got {shape}.")
  return shape


def default_dtype():
  return jnp.zeros(()).dtype  # float64 under jax_enable_x64


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


# --- preconditioning and loss (Table 1, eq. 2 and 8) ------------------------------------------

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


def get_edm_loss_fn(model_fn: Callable, *, train: bool, sigma_data: float = 0.5, p_mean: float = -1.2,
                    p_std: float = 1.2, reduce_mean: bool = True):
  """EDM training loss (eq. 2 with Table 1): ln σ ~ N(P_mean, P_std^2),
  λ(σ) = (σ^2 + σ_data^2) / (σ σ_data)^2, loss = λ(σ) reduce(|D(x_0 + σ n, σ) - x_0|^2).

  ``loss_fn(params, key, batch) -> (loss, {'losses': [B]})`` like ``losses.py``. With λ(σ) the
  effective target of F has unit variance: for data N(0, σ_data^2 I) the exact denoiser scores 1
  per dimension at every σ (tested).
  """
  denoiser_fn = precondition(model_fn, sigma_data)

  def reduce(v):
    v = v.reshape(v.shape[0], -1)
    return jnp.mean(v, axis=-1) if reduce_mean else 0.5 * jnp.sum(v, axis=-1)

  def loss_fn(params, key, batch):
    k_sigma, k_n, k_drop = jax.random.split(key, 3)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(k_sigma, (batch.shape[0],), batch.dtype))
    noise = jax.random.normal(k_n, batch.shape, batch.dtype)
    x_sigma = batch + batch_broadcast(sigma, batch) * noise
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    denoised = denoiser_fn(params, x_sigma, sigma, train=train, rng=k_drop)
    losses = weight * reduce(jnp.square(denoised - batch))
    return jnp.mean(losses), {"losses": losses}

  return loss_fn


# --- schedule and sampler (eq. 5, Algorithm 2) -------------------------------------------------

def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Array:
  """σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, i = 0..n-1, descending [n] (eq. 5)."""
  if n < 2:
    raise ValueError(f"karras_sigmas needs n >= 2 noise levels; got {n}.")
  ramp = jnp.linspace(0.0, 1.0, n)
  inv_rho = 1.0 / rho
  return (sigma_max**inv_rho + ramp * (sigma_min**inv_rho - sigma_max**inv_rho)) ** rho


def sigma_range(sde: SDE, eps: float) -> tuple[Array, Array]:
  """(σ(eps), σ(T)): the noise levels an SDE trained on [eps, T] covers."""
  return sigma_of_t(sde, jnp.asarray(eps)), sigma_of_t(sde, jnp.asarray(sde.T))


def edm_sample(key: Array, model: Model, sde: SDE, shape: Sequence[int], *, num_steps: int = 18,
               eps: float = 1e-3, rho: float = 7.0, s_churn: float = 0.0, s_tmin: float = 0.0,
               s_tmax: float = float("inf"), s_noise: float = 1.0) -> tuple[Array, dict]:
  """EDM sampler (Algorithm 2): Heun's method on dx_σ/dσ = (x_σ - D(x_σ, σ)) / σ over the ρ-schedule
  σ_0 = σ(T) > ... > σ_{N-1} = σ(eps) > σ_N = 0; deterministic (Algorithm 1) when s_churn = 0.

  Stochastic churn: for σ_i in [s_tmin, s_tmax], γ = min(s_churn / N, √2 - 1), σ̂ = (1 + γ) σ_i and
  x̂ = x + √(σ̂^2 - σ_i^2) s_noise z. Works with any SDE through σ(t) = std / m: x_T from the SDE's
  prior is mapped to x_σ = x_T / m(T), and σ = 0 is the data. Returns (x_0 [B, ...], {'nfe'}),
  nfe = 2 N - 1 (the last step to σ = 0 is an Euler step).
  """
  shape = check_shape(shape)
  if num_steps < 2:
    raise ValueError(f"edm_sample needs num_steps >= 2; got {num_steps}.")
  x, nfe = _edm_sample(key, as_traceable(model), sde, eps, rho, s_churn, s_tmin, s_tmax, s_noise,
                       shape=shape, num_steps=num_steps)
  return x, {"nfe": nfe}


@functools.partial(jax.jit, static_argnames=("shape", "num_steps"))
def _edm_sample(key, model, sde, eps, rho, s_churn, s_tmin, s_tmax, s_noise, *, shape, num_steps):
  dtype = default_dtype()
  denoise = as_denoiser(model, sde)
  batch = shape[0]
  keys = sample_keys(key, batch)
  sigma_min, sigma_max = sigma_range(sde, eps)
  sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho).astype(dtype)
  m_T, _ = sde.marginal_params(jnp.asarray(sde.T, dtype))
  x = prior_sample(keys, sde, shape, dtype) / m_T  # x_σ at σ(T)
  gamma_max = jnp.minimum(s_churn / num_steps, jnp.sqrt(2.0) - 1.0)

  def slope(x, sigma):
    return (x - denoise(x, jnp.full((batch,), sigma, dtype))) / sigma

  def heun_step(x, inputs):
    i, sigma, sigma_next = inputs
    gamma = jnp.where((sigma >= s_tmin) & (sigma <= s_tmax), gamma_max, 0.0)
    sigma_hat = sigma * (1.0 + gamma)
    z = per_sample_normal(keys, i + 1, shape, dtype)
    # √(σ̂² - σ²) written so that γ = 0 gives exactly 0 (no fused-multiply-add rounding below 0).
    x_hat = x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z
    d = slope(x_hat, sigma_hat)
    x_euler = x_hat + (sigma_next - sigma_hat) * d

    def heun_correction(x_euler):
      d_next = slope(x_euler, sigma_next)
      return x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d_next)

    # The last interval ends at σ = 0, where the slope is undefined: plain Euler (lands on D).
    x_next = jax.lax.cond(sigma_next > 0, heun_correction, lambda x_e: x_e, x_euler)
    return x_next, None

  sigmas_next = jnp.concatenate([sigmas[1:], jnp.zeros((1,), dtype)])
  x, _ = jax.lax.scan(heun_step, x, (jnp.arange(num_steps), sigmas, sigmas_next))
  return x, 2 * num_steps - 1
