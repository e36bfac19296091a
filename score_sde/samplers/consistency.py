"""Multistep consistency sampling (Song et al., "Consistency Models", ICML 2023, Algorithm 1).

The model is a consistency function f(x_σ, σ) (``diffusion.consistency.get_consistency_model``),
which has a ``Denoiser``'s signature; a score function or any other ``Denoiser`` also runs (through
``parametrization.as_denoiser``), each step then being one denoising. The sampler lives in σ: it
starts from x = σ_max z, not from the SDE's prior.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.diffusion.parametrization import Model, as_denoiser, sigma_of_t
from score_sde.diffusion.sde import SDE
from score_sde.samplers import common
from score_sde.samplers.edm import karras_sigmas

Array = jax.Array


def sample_consistency(key: Array, model: Model, sde: SDE, shape: Sequence[int], *, sigmas=None,
                       num_steps: int = 1, sigma_min: float = 0.002,
                       sigma_max: float | None = None) -> tuple[Array, dict]:
  """Algorithm 1: x = σ_1 z, x̂ = f(x, σ_1); then for each further σ_i: x = x̂ + √(σ_i² - σ_min²) z,
  x̂ = f(x, σ_i). Returns (x̂ [B, ...] in data space, {'nfe': len(sigmas)}).

  ``sigmas``: the descending levels σ_1 > σ_2 > ... > σ_min (σ_1 the start; ``num_steps`` and
  ``sigma_max`` are then not used). None: the first ``num_steps`` levels of the descending Karras
  grid (ρ = 7) with num_steps + 1 levels over [σ_min, σ_max], i.e. σ_max alone for one step;
  ``sigma_max`` None is σ(T) of ``sde``.
  """
  shape = common.check_shape(shape)
  if sigmas is None:
    if num_steps < 1:
      raise ValueError(f"sample_consistency needs num_steps >= 1; got {num_steps}.")
    if sigma_max is None:
      sigma_max = sigma_of_t(sde, jnp.asarray(sde.T))
    sigmas = karras_sigmas(num_steps + 1, sigma_min, sigma_max)[:num_steps]
  sigmas = jnp.asarray(sigmas)
  if sigmas.ndim != 1 or sigmas.shape[0] < 1:
    raise ValueError(f"sigmas must be a 1-D sequence of noise levels; got shape {sigmas.shape}.")
  _check_sigmas(sigmas, sigma_min)
  x = _sample_consistency(key, common.as_model(model), sde, sigmas, sigma_min, shape=shape)
  return x, {"nfe": int(sigmas.shape[0])}


def _check_sigmas(sigmas: Array, sigma_min) -> None:
  """Descending and above σ_min, checked when concrete."""
  if isinstance(sigmas, jax.core.Tracer) or isinstance(sigma_min, jax.core.Tracer):
    return
  values = np.asarray(sigmas)
  if not np.all(np.diff(values) < 0):
    raise ValueError(f"sigmas must be strictly descending (σ_1 > σ_2 > ...); got {values}.")
  if not values[-1] > sigma_min:
    raise ValueError(f"sigmas must all exceed sigma_min = {sigma_min} (the noise added before "
                     f"level σ is √(σ² - σ_min²)); got {values}.")


@functools.partial(jax.jit, static_argnames=("shape",))
def _sample_consistency(key, model, sde, sigmas, sigma_min, *, shape):
  dtype = common.default_dtype()
  f = as_denoiser(model, sde)
  batch = shape[0]
  keys = common.sample_keys(key, batch)
  sigmas = sigmas.astype(dtype)
  z = common.per_sample_normal(common.fold_in_all(keys, 0), shape, dtype)
  x0 = f(sigmas[0] * z, jnp.full((batch,), sigmas[0], dtype))

  def step(x0, inputs):
    i, sigma = inputs
    z = common.per_sample_normal(common.fold_in_all(keys, i), shape, dtype)
    x = x0 + jnp.sqrt(sigma**2 - sigma_min**2) * z
    return f(x, jnp.full((batch,), sigma, dtype)), None

  x0, _ = jax.lax.scan(step, x0, (jnp.arange(1, sigmas.shape[0]), sigmas[1:]))
  return x0
