"""EDM: "Elucidating the Design Space of Diffusion-Based Generative Models" (Karras et al., NeurIPS 2022).

The ρ = 7 schedule (eq. 5) and the Heun sampler with optional churn (Algorithm 2), and the
per-sample randomness helpers shared by the samplers of this package. The σ parametrisation,
``Denoiser`` and the preconditioning are in ``score_sde/diffusion/parametrization.py``, the EDM loss
in ``score_sde/diffusion/losses.py``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from score_sde.diffusion.parametrization import (Denoiser, Model, as_denoiser, sigma_inputs,
                                                 sigma_of_t)
from score_sde.diffusion.sde import SDE
from score_sde.samplers import sampling

sample_keys = sampling.sample_keys

Array = jax.Array


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
  x, _ = sigma_inputs(sde, prior_sample(keys, sde, shape, dtype), jnp.full((batch,), sde.T, dtype))
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
