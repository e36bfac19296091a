"""Predictors of the predictor-corrector sampler (Song et al., ICLR 2021, Algorithm 1 and Appendix E).

A predictor is one step of a numerical solver of the reverse-time SDE (eq. 6) or of the
probability-flow ODE (eq. 13), from time t down to the next time on the grid.

Every predictor is a pure function
  ``predictor(key, x, t, *, score_fn, sde, probability_flow) -> (x, x_mean)``
with ``key`` a batch of per-sample PRNG keys [B], ``x`` [B, ...] and ``t`` [B]. ``x_mean`` is the
step without its final noise, which the sampler returns at the last step when denoising.
Per-sample keys make one sample's noise independent of the batch size and content. ``score_fn`` is
a score function; ``pc.sample_pc`` converts its ``model`` to one before the loop.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_sde.diffusion.sde import SDE, ScoreFn, batch_broadcast
from score_sde.samplers.common import per_sample_normal

Array = jax.Array
Predictor = Callable[..., tuple[Array, Array]]


def euler_maruyama(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE,
                   probability_flow: bool = False) -> tuple[Array, Array]:
  """Euler-Maruyama step of the reverse SDE with dt = -T / N: x_mean = x + rev_drift dt."""
  dt = -sde.T / sde.N
  drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
  x_mean = x + drift * dt
  noise = batch_broadcast(diffusion * jnp.sqrt(-dt), x) * per_sample_normal(key, x.shape, x.dtype)
  return x_mean + noise, x_mean


def reverse_diffusion(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE,
                      probability_flow: bool = False) -> tuple[Array, Array]:
  """Reverse-diffusion step (eq. 46): the forward discretization run backwards, x_mean = x - rev_f."""
  rev_f, rev_G = sde.reverse(score_fn, probability_flow).discretize(x, t)
  x_mean = x - rev_f
  return x_mean + batch_broadcast(rev_G, x) * per_sample_normal(key, x.shape, x.dtype), x_mean


def ancestral_sampling(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE,
                       probability_flow: bool = False) -> tuple[Array, Array]:
  """Ancestral sampling (Appendix F): the SDE's own Markov chain step, ``sde.ancestral_step``
  (SMLD for VE, DDPM for VP; undefined for sub-VP and for the probability flow)."""
  if probability_flow:
    raise ValueError("ancestral_sampling has no probability-flow variant; use "
                     "predictor='reverse_diffusion' or 'euler_maruyama' with probability_flow=True.")
  x_mean, std = sde.ancestral_step(x, t, score_fn(x, t))
  return x_mean + batch_broadcast(std, x) * per_sample_normal(key, x.shape, x.dtype), x_mean


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
