"""Correctors of the predictor-corrector sampler (Song et al., ICLR 2021, Algorithms 4 and 5).

A corrector runs ``n_steps_each`` steps of Langevin MCMC targeting p_t at a fixed time t:
  x_mean = x + e s(x, t),   x = x_mean + sqrt(2 e) z,
with e scaled by the SDE's ``langevin_step_scale`` alpha_i (1 for VE, 1 - beta_i for VP / sub-VP).

Every corrector is a pure function
  ``corrector(key, x, t, *, score_fn, sde, snr, n_steps_each) -> (x, x_mean)``
with ``key`` a batch of per-sample PRNG keys [B], ``x`` [B, ...] and ``t`` [B].
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_sde.diffusion.sde import SDE, ScoreFn, batch_broadcast
from score_sde.samplers.common import fold_in_all, per_sample_normal

Array = jax.Array
Corrector = Callable[..., tuple[Array, Array]]


def _per_sample_norm(v: Array) -> Array:
  return jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1)  # [B]


def _langevin_loop(key, x, t, score_fn, n_steps_each, step_size_fn):
  """n_steps_each Langevin steps; step_size_fn(grad, noise) -> e [B]. Noise of step j from fold_in(key, j)."""

  def body(j, carry):
    x, _ = carry
    grad = score_fn(x, t)
    noise = per_sample_normal(fold_in_all(key, j), x.shape, x.dtype)
    e = batch_broadcast(step_size_fn(grad, noise), x)
    x_mean = x + e * grad
    return x_mean + jnp.sqrt(2.0 * e) * noise, x_mean

  return jax.lax.fori_loop(0, n_steps_each, body, (x, x))


def langevin(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE, snr: float,
             n_steps_each: int) -> tuple[Array, Array]:
  """Langevin corrector (Algorithms 4-5): e = 2 alpha (snr ||z|| / ||s||)^2.

  ||.|| is the per-sample L2 norm averaged over the batch, as in the reference implementation.
  This couples the samples of a batch: one sample's step size depends on the others. Under
  ``jax.jit`` with a batch sharded by ``NamedSharding``, ``jnp.mean`` is the mean over the global
  batch (XLA inserts the cross-device reduction), so the step size is the same as on one device.
  Use ``ald`` for a per-sample step size.
  """
  alpha = sde.langevin_step_scale(t)

  def step_size(grad, noise):
    grad_norm = jnp.mean(_per_sample_norm(grad))
    noise_norm = jnp.mean(_per_sample_norm(noise))
    return 2.0 * alpha * (snr * noise_norm / grad_norm) ** 2

  return _langevin_loop(key, x, t, score_fn, n_steps_each, step_size)


def ald(key: Array, x: Array, t: Array, *, score_fn: ScoreFn, sde: SDE, snr: float,
        n_steps_each: int) -> tuple[Array, Array]:
  """Annealed-Langevin corrector (NCSN step rule): e = 2 alpha (snr std(t))^2, per sample."""
  alpha = sde.langevin_step_scale(t)
  std = sde.marginal_params(t)[1]
  e = 2.0 * alpha * (snr * std) ** 2
  return _langevin_loop(key, x, t, score_fn, n_steps_each, lambda grad, noise: e)


CORRECTORS: dict[str, Corrector | None] = {"langevin": langevin, "ald": ald, "none": None}


def get_corrector(name: str) -> Corrector | None:
  """The corrector step called ``name`` (None for 'none')."""
  try:
    return CORRECTORS[name]
  except KeyError:
    raise ValueError(f"Unknown corrector {name!r}; valid choices are {sorted(CORRECTORS)}.") from None
