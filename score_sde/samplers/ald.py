"""Annealed Langevin dynamics of NCSN (Song & Ermon, NeurIPS 2019, Algorithm 1)."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.diffusion import parametrization
from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE, batch_broadcast
from score_sde.samplers import common

Array = jax.Array


def _check_variance_exploding(sde: SDE) -> None:
  """ALD anneals x = x_0 + σ_i z over noise levels σ_i = std(t_i): it needs m(t) = 1."""
  m, _ = sde.marginal_params(jnp.linspace(0.0, sde.T, 5))
  if not isinstance(m, jax.core.Tracer) and not np.allclose(m, 1.0):
    raise ValueError(f"sample_ald anneals over the noise levels of a variance-exploding SDE "
                     f"(mean scale m(t) = 1); {type(sde).__name__} scales the data. Use "
                     f"sample_pc(corrector='ald') instead.")


def sample_ald(key: Array, model: Model, sde: SDE, shape: Sequence[int], *, step_lr: float,
               n_steps_each: int, denoise: bool = True) -> tuple[Array, dict]:
  """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over the N levels of the SDE.

  The levels are the SDE's N (``sde.N``), as in the reference; there is no ``num_steps``. For
  σ_i = std(t_i), t_i = i / (N - 1) from σ_max down to σ_min, ``n_steps_each`` steps of
  x <- x + a_i / 2 s(x, t_i) + sqrt(a_i) z with a_i = step_lr σ_i^2 / σ_min^2, from the prior.
  Needs a variance-exploding SDE (m(t) = 1). ``denoise`` adds the Tweedie step
  x + σ_min^2 s(x, σ_min) (one more score evaluation), as NCSNv2 does.
  Returns (x, {'nfe': N n_steps_each (+ 1 when denoising)}).
  """
  shape = common.check_shape(shape)
  _check_variance_exploding(sde)
  if n_steps_each < 1:
    raise ValueError(f"n_steps_each must be >= 1; got {n_steps_each}.")
  x = _sample_ald(key, common.as_model(model), sde, step_lr, shape=shape,
                  n_steps_each=n_steps_each, denoise=denoise)
  return x, {"nfe": sde.N * n_steps_each + int(denoise)}


@functools.partial(jax.jit, static_argnames=("shape", "n_steps_each", "denoise"))
def _sample_ald(key, model, sde, step_lr, *, shape, n_steps_each, denoise):
  score_fn = parametrization.as_score_fn(model, sde)
  keys = common.sample_keys(key, shape[0])
  x = common.prior_sample(keys, sde, shape, common.default_dtype())
  step_keys = common.fold_in_all(keys, 1)
  timesteps = jnp.linspace(sde.T, 0.0, sde.N).astype(x.dtype)  # σ(t_i) = σ_i, descending
  sigma_min = sde.marginal_params(jnp.zeros((), x.dtype))[1]

  def level(i, x):
    t = jnp.full((shape[0],), timesteps[i])
    a = step_lr * (sde.marginal_params(t)[1] / sigma_min) ** 2  # [B]
    keys_i = common.fold_in_all(step_keys, i)

    def step(j, x):
      z = common.per_sample_normal(common.fold_in_all(keys_i, j), x.shape, x.dtype)
      return x + batch_broadcast(a / 2, x) * score_fn(x, t) + batch_broadcast(jnp.sqrt(a), x) * z

    return jax.lax.fori_loop(0, n_steps_each, step, x)

  x = jax.lax.fori_loop(0, sde.N, level, x)
  if denoise:
    t_min = jnp.zeros((shape[0],), x.dtype)
    x = x + sigma_min**2 * score_fn(x, t_min)
  return x
