"""Predictor-corrector sampling (Song et al., ICLR 2021, Algorithm 1).

Predictor steps are in ``predictors.py``, corrector steps in ``correctors.py``. The whole loop is one
``jax.jit``-compiled ``lax.fori_loop``, compiled once per (shape, options).

Randomness: sample b draws all of its noise from fold_in(key, b), with one exception: the
``langevin`` corrector scales its step by norms averaged over the batch, as the reference
implementation does, so with it a sample depends on the rest of its batch (``ald`` does not).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from score_sde.diffusion import parametrization
from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE
from score_sde.samplers import common
from score_sde.samplers import correctors as correctors_lib
from score_sde.samplers import predictors as predictors_lib

Array = jax.Array
# (keys [B], x, x_mean, t [B]) -> (x, x_mean): a projection applied by ``sample_pc`` after each update.
Constraint = Callable[[Array, Array, Array, Array], tuple[Array, Array]]


def pc_timesteps(sde: SDE, eps: float) -> Array:
  """The PC time grid linspace(T, eps, N), descending, [N]."""
  return jnp.linspace(sde.T, eps, sde.N)


def sample_pc(key: Array, model: Model, sde: SDE, shape: Sequence[int], *,
              predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
              n_steps_each: int = 1, probability_flow: bool = False, denoise: bool = True,
              eps: float | None = None, constraint: Constraint | None = None) -> tuple[Array, dict]:
  """Predictor-corrector sampler (Algorithm 1): at each t of linspace(T, eps, N), corrector then predictor.

  The steps are the SDE's N levels (``sde.N``), as in the reference; there is no ``num_steps``.
  ``n_steps_each`` corrector steps per level; ``eps`` None is ``sde.default_eps``. ``denoise``
  (the reference's ``noise_removal``) returns the noise-free mean x̄ of the last step.
  Returns (x [shape], {'nfe': N (predictor) + N n_steps_each (corrector)}).

  ``constraint(keys [B], x, x_mean, t [B]) -> (x, x_mean)``, when given, is applied to the prior
  draw and after every corrector and predictor update, with t the time the state has reached
  (0 after the last predictor step). ``controllable.py`` uses it for inpainting and colorization.
  It must be a pytree callable (e.g. a ``flax.struct`` dataclass) to be traced rather than static.
  """
  shape = common.check_shape(shape)
  predictor_fn = predictors_lib.get_predictor(predictor)
  corrector_fn = correctors_lib.get_corrector(corrector)
  if predictor_fn is None and corrector_fn is None:
    raise ValueError("predictor='none' and corrector='none' leave nothing to do; choose at least one.")
  if predictor in ("reverse_diffusion", "ancestral_sampling") or corrector_fn is not None:
    sde.check_discretization()
  if corrector_fn is not None and n_steps_each < 1:
    raise ValueError(f"n_steps_each (corrector steps per level) must be >= 1; got {n_steps_each}.")
  x = _sample_pc(key, common.as_model(model), sde, snr, common.resolve_eps(sde, eps), constraint,
                 shape=shape, predictor=predictor, corrector=corrector, n_steps_each=n_steps_each,
                 probability_flow=probability_flow, denoise=denoise)
  nfe = sde.N * ((predictor_fn is not None) + (corrector_fn is not None) * n_steps_each)
  return x, {"nfe": nfe}


@functools.partial(jax.jit, static_argnames=("shape", "predictor", "corrector", "n_steps_each",
                                             "probability_flow", "denoise"))
def _sample_pc(key, model, sde, snr, eps, constraint, *, shape, predictor, corrector, n_steps_each,
               probability_flow, denoise):
  score_fn = parametrization.as_score_fn(model, sde)
  predictor_fn = predictors_lib.get_predictor(predictor)
  corrector_fn = correctors_lib.get_corrector(corrector)
  keys = common.sample_keys(key, shape[0])
  step_keys = common.fold_in_all(keys, 1)
  x = common.prior_sample(keys, sde, shape, common.default_dtype())  # [B, ...]
  timesteps = pc_timesteps(sde, eps).astype(x.dtype)
  # Time reached after the predictor step at timesteps[i]: the next grid time, 0 after the last.
  next_times = jnp.append(timesteps[1:], jnp.zeros((1,), x.dtype))
  constrain = constraint if constraint is not None else (lambda keys, x, x_mean, t: (x, x_mean))
  x, _ = constrain(common.fold_in_all(keys, 2), x, x, jnp.full((shape[0],), timesteps[0]))

  def step(i, carry):
    x, x_mean = carry
    t = jnp.full((shape[0],), timesteps[i])  # [B]
    keys_i = common.fold_in_all(step_keys, i)
    if corrector_fn is not None:
      x, x_mean = corrector_fn(common.fold_in_all(keys_i, 0), x, t, score_fn=score_fn, sde=sde,
                               snr=snr, n_steps_each=n_steps_each)
      x, x_mean = constrain(common.fold_in_all(keys_i, 2), x, x_mean, t)
    if predictor_fn is not None:
      x, x_mean = predictor_fn(common.fold_in_all(keys_i, 1), x, t, score_fn=score_fn, sde=sde,
                               probability_flow=probability_flow)
      x, x_mean = constrain(common.fold_in_all(keys_i, 3), x, x_mean, jnp.full_like(t, next_times[i]))
    return x, x_mean

  x, x_mean = jax.lax.fori_loop(0, sde.N, step, (x, x))
  return x_mean if denoise else x
