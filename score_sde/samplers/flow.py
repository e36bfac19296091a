"""Fixed-step solvers of the velocity form of the probability-flow ODE, dx/dt = v(x, t).

v = m' x̂_0 + std' ε̂ is the probability-flow drift f - g² s / 2 (``parametrization``); for
rectified flow (Liu et al., ICLR 2023) it is E[z - x_0 | x_t], whose paths are nearly straight, so a
few Euler steps (Section 2.3 there) or Heun steps already sample well. Any model on any SDE works:
the velocity comes from ``parametrization.velocity_prediction``.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from score_sde.diffusion.parametrization import Model, data_prediction, velocity_prediction
from score_sde.diffusion.sde import SDE
from score_sde.samplers import common

Array = jax.Array

SOLVERS = ("euler", "heun")


def sample_flow(key: Array, model: Model, sde: SDE, shape: Sequence[int], *, num_steps: int = 8,
                solver: str = "euler", eps: float | None = None,
                denoise: bool = True) -> tuple[Array, dict]:
  """Euler or Heun (trapezoidal corrector, as EDM Algorithm 1) on dx/dt = v(x, t) over the uniform
  grid t_i = T + i (eps - T) / N, i = 0..N, N = ``num_steps``, from x_T ~ prior (eps None:
  ``sde.default_eps``).

  Heun corrects every step, also the last (t = eps > 0 is a regular point). ``denoise`` ends with
  x̂_0 = E[x_0 | x_eps], the model's data prediction at eps. Returns (x [B, ...], {'nfe'}) with
  nfe = N for Euler, 2 N for Heun, plus one with ``denoise``.
  """
  shape = common.check_shape(shape)
  if solver not in SOLVERS:
    raise ValueError(f"Unknown solver {solver!r} of sample_flow; valid choices are {SOLVERS}.")
  if num_steps < 1:
    raise ValueError(f"sample_flow needs num_steps >= 1; got {num_steps}.")
  x = _sample_flow(key, common.as_model(model), sde, common.resolve_eps(sde, eps), shape=shape,
                   num_steps=num_steps, solver=solver, denoise=denoise)
  nfe = num_steps * (2 if solver == "heun" else 1) + int(denoise)
  return x, {"nfe": nfe}


@functools.partial(jax.jit, static_argnames=("shape", "num_steps", "solver", "denoise"))
def _sample_flow(key, model, sde, eps, *, shape, num_steps, solver, denoise):
  dtype = common.default_dtype()
  batch = shape[0]
  v_fn = velocity_prediction(model, sde)
  velocity = lambda x, t: v_fn(x, jnp.full((batch,), t, dtype))
  times = jnp.linspace(sde.T, eps, num_steps + 1).astype(dtype)
  x = common.prior_sample(common.sample_keys(key, batch), sde, shape, dtype)

  def step(x, interval):
    t, t_next = interval
    d = velocity(x, t)
    x_euler = x + (t_next - t) * d
    if solver == "euler":
      return x_euler, None
    return x + (t_next - t) * 0.5 * (d + velocity(x_euler, t_next)), None

  x, _ = jax.lax.scan(step, x, (times[:-1], times[1:]))
  if denoise:
    return data_prediction(model, sde)(x, jnp.full((batch,), eps, dtype))
  return x
