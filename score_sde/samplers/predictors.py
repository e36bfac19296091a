"""Predictors of the predictor-corrector sampler (Song et al., ICLR 2021, Algorithm 1 and Appendix E).

A predictor is one step of a numerical solver of the reverse-time SDE (eq. 6) or of the
probability-flow ODE (eq. 13), from time t down to the next time on the grid.

Every predictor is a pure function
  ``predictor(key, x, t, *, score_fn, sde, probability_flow) -> (x, x_mean)``
with ``key`` a batch of per-sample PRNG keys [B], ``x`` [B, ...] and ``t`` [B]. ``x_mean`` is the
step without its final noise, which the sampler returns at the last step when denoising.
Per-sample keys make one sample's noise independent of the batch size and content.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_sde.diffusion.sde import SDE, VESDE, VPSDE, ScoreFn, batch_broadcast

Array = jax.Array
Predictor = Callable[..., tuple[Array, Array]]


def per_sample_normal(keys: Array, x: Array) -> Array:
  """Standard normal noise shaped like ``x`` [B, ...], row b drawn from ``keys[b]`` alone."""
  return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)


def euler_maruyama(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE,
                   probability_flow: bool = False) -> tuple[Array, Array]:
  """Euler-Maruyama step of the reverse SDE with dt = -T / N: x_mean = x + rev_drift dt."""
  dt = -sde.T / sde.N
  drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
  x_mean = x + drift * dt
  noise = batch_broadcast(diffusion * jnp.sqrt(-dt), x) * per_sample_normal(key, x)
  return x_mean + noise, x_mean


def reverse_diffusion(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE,
                      probability_flow: bool = False) -> tuple[Array, Array]:
  """Reverse-diffusion step (eq. 46): the forward discretization run backwards, x_mean = x - rev_f."""
  rev_f, rev_G = sde.reverse(score_fn, probability_flow).discretize(x, t)
  x_mean = x - rev_f
  return x_mean + batch_broadcast(rev_G, x) * per_sample_normal(key, x), x_mean


def _ve_ancestral(key, x, t, score_fn, sde: VESDE):
  i = sde.time_to_index(t)
  sigmas = sde.discrete_sigmas
  sigma = sigmas[i]
  sigma_prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
  var_step = sigma**2 - sigma_prev**2
  x_mean = x + batch_broadcast(var_step, x) * score_fn(x, t)
  std = jnp.sqrt(sigma_prev**2 * var_step / sigma**2)
  return x_mean + batch_broadcast(std, x) * per_sample_normal(key, x), x_mean


def _vp_ancestral(key, x, t, score_fn, sde: VPSDE):
  beta = sde.discrete_betas[sde.time_to_index(t)]
  x_mean = (x + batch_broadcast(beta, x) * score_fn(x, t)) / batch_broadcast(jnp.sqrt(1.0 - beta), x)
  return x_mean + batch_broadcast(jnp.sqrt(beta), x) * per_sample_normal(key, x), x_mean


_ANCESTRAL_STEPS = {VESDE: _ve_ancestral, VPSDE: _vp_ancestral}


def ancestral_sampling(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE,
                       probability_flow: bool = False) -> tuple[Array, Array]:
  """Ancestral sampling (Appendix F): the SMLD (VE) or DDPM (VP) posterior p(x_{i-1} | x_i) step."""
  check_ancestral(sde, probability_flow)
  return _ANCESTRAL_STEPS[type(sde)](key, x, t, score_fn, sde)


def check_ancestral(sde: SDE, probability_flow: bool) -> None:
  """Raises if ancestral sampling is undefined for this SDE / mode."""
  if type(sde) not in _ANCESTRAL_STEPS:
    raise ValueError(f"ancestral_sampling is defined only for VESDE and VPSDE (the SMLD and DDPM "
                     f"Markov chains), not {type(sde).__name__}; use predictor='reverse_diffusion' "
                     f"or 'euler_maruyama'.")
  if probability_flow:
    raise ValueError("ancestral_sampling has no probability-flow variant; use "
                     "predictor='reverse_diffusion' or 'euler_maruyama' with probability_flow=True.")


PREDICTORS: dict[str, Predictor | None] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral_sampling": ancestral_sampling,
    "none": None,
}


def get_predictor(name: str) -> Predictor | None:
  """The predictor step called ``name`` (None for 'none')."""
  try:
    return PREDICTORS[name]
  except KeyError:
    raise ValueError(f"Unknown predictor {name!r}; valid choices are {sorted(PREDICTORS)}.") from None
