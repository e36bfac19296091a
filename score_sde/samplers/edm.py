"""EDM: "Elucidating the Design Space of Diffusion-Based Generative Models" (Karras et al., NeurIPS 2022).

The ρ = 7 schedule (eq. 5) and the Heun sampler with optional churn (Algorithm 2). The σ
parametrisation, ``Denoiser`` and the preconditioning are in ``score_sde/diffusion/parametrization.py``,
the EDM loss in ``score_sde/diffusion/losses.py``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from score_sde.diffusion.parametrization import Model, as_denoiser, sigma_of_t
from score_sde.diffusion.sde import SDE
from score_sde.samplers import common

Array = jax.Array


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


def sample_edm(key: Array, model: Model, sde: SDE, shape: Sequence[int], *, num_steps: int = 18,
               eps: float | None = None, rho: float = 7.0, s_churn: float = 0.0, s_tmin: float = 0.0,
               s_tmax: float = float("inf"), s_noise: float = 1.0,
               denoise: bool = True) -> tuple[Array, dict]:
  """EDM sampler (Algorithm 2): Heun's method on dx_σ/dσ = (x_σ - D(x_σ, σ)) / σ over the ρ-schedule
  σ_0 = σ(T) > ... > σ_{N-1} = σ(eps) > σ_N = 0 with N = ``num_steps`` (eps None:
  ``sde.default_eps``); deterministic (Algorithm 1) when s_churn = 0.

  Stochastic churn: for σ_i in [s_tmin, s_tmax], γ = min(s_churn / N, √2 - 1), σ̂ = (1 + γ) σ_i and
  x̂ = x + √(σ̂^2 - σ_i^2) s_noise z. Works with any SDE through σ(t) = std / m: x_T from the SDE's
  prior is mapped to x_σ = x_T / m(T), and σ = 0 is the data. ``denoise`` makes the last step,
  from σ(eps) to σ = 0, an Euler step that lands on D(x, σ(eps)) (Algorithm 2); without it the
  sampler stops at σ(eps) and returns x_t = m(eps) x_σ there, like the other samplers. Returns (x [B, ...], {'nfe'}),
  nfe = 2 N - 1 with ``denoise``, 2 (N - 1) without.
  """
  shape = common.check_shape(shape)
  if num_steps < 2:
    raise ValueError(f"sample_edm needs num_steps >= 2; got {num_steps}.")
  x = _sample_edm(key, common.as_model(model), sde, common.resolve_eps(sde, eps), rho, s_churn,
                  s_tmin, s_tmax, s_noise, shape=shape, num_steps=num_steps, denoise=denoise)
  return x, {"nfe": 2 * num_steps - 1 if denoise else 2 * (num_steps - 1)}


@functools.partial(jax.jit, static_argnames=("shape", "num_steps", "denoise"))
def _sample_edm(key, model, sde, eps, rho, s_churn, s_tmin, s_tmax, s_noise, *, shape, num_steps,
                denoise):
  dtype = common.default_dtype()
  denoiser = as_denoiser(model, sde)
  batch = shape[0]
  keys = common.sample_keys(key, batch)
  sigma_min, sigma_max = sigma_range(sde, eps)
  sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho).astype(dtype)
  m_T, _ = sde.marginal_params(jnp.asarray(sde.T, dtype))
  x = common.prior_sample(keys, sde, shape, dtype) / m_T  # x_σ at σ(T)
  gamma_max = jnp.minimum(s_churn / num_steps, jnp.sqrt(2.0) - 1.0)

  def slope(x, sigma):
    return (x - denoiser(x, jnp.full((batch,), sigma, dtype))) / sigma

  def heun_step(x, inputs):
    i, sigma, sigma_next = inputs
    gamma = jnp.where((sigma >= s_tmin) & (sigma <= s_tmax), gamma_max, 0.0)
    sigma_hat = sigma * (1.0 + gamma)
    z = common.per_sample_normal(common.fold_in_all(keys, i + 1), shape, dtype)
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

  if denoise:
    sigmas_next = jnp.concatenate([sigmas[1:], jnp.zeros((1,), dtype)])
    steps = jnp.arange(num_steps)
  else:
    sigmas, sigmas_next = sigmas[:-1], sigmas[1:]
    steps = jnp.arange(num_steps - 1)
  x, _ = jax.lax.scan(heun_step, x, (steps, sigmas, sigmas_next))
  if denoise:
    return x
  m_eps, _ = sde.marginal_params(jnp.asarray(eps, dtype))
  return m_eps * x  # x_t at t = eps, as the other samplers return it
