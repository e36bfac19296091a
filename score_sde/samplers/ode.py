"""The probability-flow ODE (Song et al., ICLR 2021, eq. 13): sampling, encoding and decoding.

dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 is solved on device by diffrax with an adaptive Runge-Kutta
solver (``SOLVERS``) and per-sample step-size control (a ``vmap`` over the batch), where the
reference solves on the host with RK45 at rtol = atol = 1e-5.
"""
from __future__ import annotations

import functools
from typing import Sequence

import diffrax
import jax
import jax.numpy as jnp

from score_sde.diffusion import parametrization
from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE, ScoreFn
from score_sde.samplers import common

Array = jax.Array

SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
}


def get_solver(solver: str):
  """The diffrax solver called ``solver`` (a key of ``SOLVERS``)."""
  try:
    return SOLVERS[solver]()
  except KeyError:
    raise ValueError(f"Unknown ODE solver {solver!r}; valid choices are {sorted(SOLVERS)}.") from None


def solver_nfe(solver, num_steps: Array) -> Array:
  """Vector-field evaluations of a diffrax Runge-Kutta solve with a PID controller and dt0=None.

  An FSAL solver evaluates f(t0, y0) once; each attempted step (accepted or rejected) costs its
  stages, less one when FSAL. (With diffrax 0.7 the initial step-size selection adds no executed
  evaluation; ``tests/test_sampling.py`` checks this count against a host-side call counter.)
  """
  tableau = solver.tableau
  stages = len(tableau.c) + 1
  per_step = stages - 1 if tableau.fsal else stages
  return int(tableau.fsal) + per_step * num_steps


def solve_adaptive(vector_field, y0, t0: float, t1: float, *, rtol: float, atol: float,
                   solver: str, max_steps: int = 16384):
  """Solves dy/dt = vector_field(t, y) for ONE sample y0 (a pytree) from t0 to t1 with diffrax.

  Returns (y(t1), nfe). vmap it over a batch for per-sample step-size control.
  """
  solver_obj = get_solver(solver)
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda t, y, args: vector_field(t, y)), solver_obj, t0=t0, t1=t1, dt0=None,
      y0=y0, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  y1 = jax.tree_util.tree_map(lambda v: v[0], sol.ys)
  return y1, solver_nfe(solver_obj, sol.stats["num_steps"])


def probability_flow_drift(score_fn: ScoreFn, sde: SDE):
  """The probability-flow ODE drift (eq. 13) f - g^2 s / 2 for ONE sample: (t, x [...]) -> [...]."""
  reverse = sde.reverse(score_fn, probability_flow=True)

  def drift(t, x):
    t = jnp.full((1,), t, x.dtype)
    return reverse.sde(x[None], t)[0][0]

  return drift


@functools.partial(jax.jit, static_argnames=("solver",))
def _solve_pf_ode(model, sde, x, t0, t1, rtol, atol, *, solver):
  def solve(model_b, xi):
    drift = probability_flow_drift(parametrization.as_score_fn(model_b, sde), sde)
    return solve_adaptive(drift, xi, t0, t1, rtol=rtol, atol=atol, solver=solver)

  y, nfe = common.vmap_over_samples(solve, model, x)
  # Under vmap the solver's while_loop runs until the slowest sample has finished, evaluating
  # the score on the whole batch each time: the batched cost is the largest per-sample NFE.
  return y, jnp.max(nfe)


def encode(model: Model, sde: SDE, x: Array, *, rtol: float = 1e-5, atol: float = 1e-5,
           solver: str = "tsit5", eps: float | None = None) -> tuple[Array, dict]:
  """Maps data x [B, ...] (at time eps, None: ``sde.default_eps``) to latents z = x(T) along the
  probability-flow ODE. Returns (z, {'nfe'}). Step-size control is per sample: z_b depends on x_b alone.
  """
  get_solver(solver)
  common.check_tolerances(rtol, atol)
  z, nfe = _solve_pf_ode(common.as_model(model), sde, x, common.resolve_eps(sde, eps), sde.T,
                         rtol, atol, solver=solver)
  return z, {"nfe": common.host_int(nfe)}


def decode(model: Model, sde: SDE, z: Array, *, rtol: float = 1e-5, atol: float = 1e-5,
           solver: str = "tsit5", eps: float | None = None) -> tuple[Array, dict]:
  """Maps latents z [B, ...] (at time T) back to data x(eps); the inverse of ``encode``."""
  get_solver(solver)
  common.check_tolerances(rtol, atol)
  x, nfe = _solve_pf_ode(common.as_model(model), sde, z, sde.T, common.resolve_eps(sde, eps),
                         rtol, atol, solver=solver)
  return x, {"nfe": common.host_int(nfe)}


def sample_ode(key: Array, model: Model, sde: SDE, shape: Sequence[int], *, rtol: float = 1e-5,
               atol: float = 1e-5, solver: str = "tsit5", denoise: bool = True,
               eps: float | None = None) -> tuple[Array, dict]:
  """Probability-flow ODE sampler: z ~ prior, x = decode(z) from T to eps (None: ``sde.default_eps``).

  The number of steps is chosen by the adaptive solver (tolerances ``rtol``, ``atol``).
  ``denoise`` (the reference's ``noise_removal``) ends with one reverse-diffusion step at eps,
  returning its noise-free mean. Returns (x, {'nfe'}); nfe counts batched score evaluations: the
  largest per-sample count of the adaptive solve (see ``solver_nfe``), plus one for denoising.
  """
  shape = common.check_shape(shape)
  get_solver(solver)
  common.check_tolerances(rtol, atol)
  x, nfe = _sample_ode(key, common.as_model(model), sde, rtol, atol, common.resolve_eps(sde, eps),
                       shape=shape, solver=solver, denoise=denoise)
  return x, {"nfe": common.host_int(nfe)}


@functools.partial(jax.jit, static_argnames=("shape", "solver", "denoise"))
def _sample_ode(key, model, sde, rtol, atol, eps, *, shape, solver, denoise):
  keys = common.sample_keys(key, shape[0])
  z = common.prior_sample(keys, sde, shape, common.default_dtype())
  x, nfe = _solve_pf_ode(model, sde, z, sde.T, eps, rtol, atol, solver=solver)
  if denoise:
    # Reference "noise removal": the noise-free mean of one reverse-diffusion step at eps.
    t = jnp.full((shape[0],), eps, x.dtype)
    score_fn = parametrization.as_score_fn(model, sde)
    rev_f, _ = sde.reverse(score_fn, probability_flow=False).discretize(x, t)
    x = x - rev_f
    nfe = nfe + 1
  return x, nfe
