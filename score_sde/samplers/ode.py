"""The probability-flow ODE (Song et al., ICLR 2021, eq. 13): sampling, encoding and decoding.

dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 is solved on device by diffrax with an adaptive Runge-Kutta
solver (``SOLVERS``), the step-size rule of scipy's RK45 (``HairerController``) and per-sample
step-size control (a ``vmap`` over the batch), where the reference solves on the host with RK45 at
rtol = atol = 1e-5.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import diffrax
import jax
import jax.numpy as jnp
import optimistix

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


class HairerController(diffrax.AbstractAdaptiveStepSizeController):
  """Step-size control of Hairer, Norsett & Wanner (1993, Sec. II.4, eq. 4.13), as scipy's RK45
  (the reference's likelihood solver) applies it. With err the RMS over the state of
  y_error / (atol + rtol max(|y0|, |y1|)), an attempt is accepted if err < 1, and the next step is
    h * clip(safety * err^(-1/q), factormin, factormax)    (q: the error estimate's order + 1),
  where the step after an accepted one may shrink, and the step after a rejected one may not grow.
  diffrax's PIDController never shrinks after an accepted step, so a solve whose error creeps up
  finds its step size by rejections, each a full step of evaluations (docs/performance.md: 14-18
  of 62-68 Dopri5 steps rejected on the trained digits model's likelihood, 3-4 of 58 here).
  A non-finite error rejects the attempt and shrinks the step by ``factormin``.
  """
  rtol: float
  atol: float
  norm: Callable = optimistix.rms_norm
  safety: float = 0.9
  factormin: float = 0.2
  factormax: float = 10.0

  def wrap(self, direction):
    return self

  def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
    """The first step (dt0, or Hairer's initial-step heuristic as diffrax's PIDController picks
    it); the state is whether the last attempt was rejected."""
    if dt0 is None:
      t_next, _ = diffrax.PIDController(rtol=self.rtol, atol=self.atol, norm=self.norm).init(
          terms, t0, t1, y0, dt0, args, func, error_order)
    else:
      t_next = t0 + dt0
    return t_next, jnp.asarray(False)

  def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, rejected_last):
    scaled = lambda a, b, e: e / (self.atol + self.rtol * jnp.maximum(jnp.abs(a), jnp.abs(b)))
    err = self.norm(jax.tree.map(scaled, y0, y1_candidate, y_error))
    err = jnp.where(jnp.isfinite(err), err, jnp.inf)
    accept = err < 1
    upper = jnp.where(accept & rejected_last, 1.0, self.factormax)
    factor = jnp.clip(self.safety * err ** (-1.0 / error_order), self.factormin, upper)
    t_start = jnp.where(accept, t1, t0)
    t_next = t_start + (t1 - t0) * factor.astype(jnp.result_type(t1))
    return accept, t_start, t_next, False, ~accept, diffrax.RESULTS.successful


def solver_nfe(solver, num_steps: Array) -> Array:
  """Vector-field evaluations of a diffrax Runge-Kutta solve with dt0=None (``solve_adaptive``).

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
  """Solves dy/dt = vector_field(t, y) for ONE sample y0 (a pytree) from t0 to t1 with diffrax and
  ``HairerController``.

  Returns (y(t1), nfe). vmap it over a batch for per-sample step-size control.
  """
  solver_obj = get_solver(solver)
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda t, y, args: vector_field(t, y)), solver_obj, t0=t0, t1=t1, dt0=None,
      y0=y0, stepsize_controller=HairerController(rtol=rtol, atol=atol),
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
