"""Samplers of "Score-Based Generative Modeling through SDEs" (Song et al., ICLR 2021).

All samplers share the form ``sample(key, score_fn, sde, shape, **hparams) -> (x, info)``, with
``info['nfe']`` the number of (batched) score evaluations:
  sample_pc   predictor-corrector sampling (Algorithm 1), predictors in ``predictors.py`` and
              correctors in ``correctors.py``;
  sample_ald  annealed Langevin dynamics of NCSN (Song & Ermon 2019, Algorithm 1);
  sample_ode  the probability-flow ODE (eq. 13) with an adaptive Runge-Kutta solver (diffrax);
and ``encode``/``decode`` map data to latents and back through the probability-flow ODE.

Compilation. Every sampler runs its whole loop inside one ``jax.jit``-compiled function
(``lax.fori_loop`` or diffrax's ``while_loop``), compiled once per (shape, N, options).
``score_fn(x [B, ...], t [B])`` may be any callable:
  * a pytree callable such as ``jax.tree_util.Partial(net_score, params)`` is a traced argument,
    so calling again with new ``params`` values (same shapes) does not recompile;
  * any other callable (e.g. a closure over params) is a static argument keyed by its identity:
    the same object reuses the compiled sampler, a new closure compiles again. To feed new
    params to a closure without recompiling, either wrap it as above or jit your own function,
    ``jax.jit(lambda key, params: sample_pc(key, get_score_fn(..., params), ...))``.

Randomness. Sample b of a batch draws all of its noise from ``fold_in(key, b)``, so its result
does not depend on the batch size or on the other samples, with one exception: the ``langevin``
corrector scales its step by norms averaged over the batch, as the reference implementation does.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import diffrax
import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from score_sde.samplers import correctors as correctors_lib
from score_sde.samplers import predictors as predictors_lib
from score_sde.diffusion.sde import SDE, VESDE, ScoreFn, batch_broadcast

Array = jax.Array
# (keys [B], x, x_mean, t [B]) -> (x, x_mean): a projection applied by ``sample_pc`` after each update.
Constraint = Callable[[Array, Array, Array, Array], tuple[Array, Array]]


# --- helpers shared by the samplers ---------------------------------------------------------

def as_traceable(score_fn: ScoreFn):
  """Makes ``score_fn`` a pytree that ``jax.jit`` accepts as an argument.

  Pytree callables (``Partial``, flax structs with ``__call__``) pass through, their leaves traced;
  a plain callable becomes ``Partial(score_fn)``, static and compared by identity.
  """
  if not callable(score_fn):
    raise TypeError(f"score_fn must be a callable score_fn(x [B, ...], t [B]); got {type(score_fn)}.")
  leaves = jax.tree_util.tree_leaves(score_fn)
  if len(leaves) == 1 and leaves[0] is score_fn:  # an unregistered object: a pytree leaf
    return Partial(score_fn)
  return score_fn


def per_sample_axes(score_fn):
  """``vmap`` in_axes for a score_fn pytree: 0 for leaves with one entry per sample, else None.

  A score_fn that carries per-sample state (the class labels of a guided score) declares it with a
  ``per_sample_axes()`` method; any other callable is shared by all samples.
  """
  if hasattr(score_fn, "per_sample_axes"):
    return score_fn.per_sample_axes()
  return jax.tree.map(lambda _: None, score_fn)


def vmap_over_samples(fn: Callable, score_fn: ScoreFn, *batched):
  """``jax.vmap`` of ``fn(score_fn_b, *args_b)`` over the batch, for per-sample adaptive solvers.

  fn calls score_fn on batches of ONE sample, so the per-sample leaves of ``score_fn`` (see
  ``per_sample_axes``) are sliced to sample b and given a batch axis of size 1.
  """
  axes = per_sample_axes(score_fn)

  def one(score_fn_b, *args):
    score_fn_b = jax.tree.map(lambda a, v: v if a is None else v[None], axes, score_fn_b,
                              is_leaf=lambda a: a is None)
    return fn(score_fn_b, *args)

  return jax.vmap(one, in_axes=(axes,) + (0,) * len(batched))(score_fn, *batched)


def sample_keys(key: Array, batch_size: int) -> Array:
  """Per-sample keys [B]: key b = fold_in(key, b), independent of the batch size."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size))


def fold_in_all(keys: Array, data) -> Array:
  """fold_in(key_b, data) for every per-sample key [B]."""
  return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


def per_sample_prior(keys: Array, sde: SDE, shape: Sequence[int], dtype=None) -> Array:
  """x_T ~ prior, row b from ``keys[b]`` [B] alone; shape [B, ...]."""
  dtype = dtype or jnp.zeros(()).dtype  # float64 under jax_enable_x64
  return jax.vmap(lambda k: sde.prior_sampling(k, tuple(shape[1:])).astype(dtype))(keys)


def pc_timesteps(sde: SDE, eps: float) -> Array:
  """The PC time grid linspace(T, eps, N), descending, [N]."""
  return jnp.linspace(sde.T, eps, sde.N)


def _check_shape(shape) -> tuple[int, ...]:
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2:
    raise ValueError(f"shape must be (batch, *sample_shape), e.g. (64, 32, 32, 3); got {shape}.")
  return shape


# --- predictor-corrector sampling -------------------------------------------------------------

def sample_pc(key: Array, score_fn: ScoreFn, sde: SDE, shape: Sequence[int], *,
              predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
              n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
              eps: float = 1e-3, constraint: Constraint | None = None) -> tuple[Array, dict]:
  """Predictor-corrector sampler (Algorithm 1): at each t of linspace(T, eps, N), corrector then predictor.

  Returns x [shape] (the noise-free mean of the last step when ``denoise``) and info with 'nfe',
  the number of score evaluations, N (predictor) + N n_steps (corrector).

  ``constraint(keys [B], x, x_mean, t [B]) -> (x, x_mean)``, when given, is applied to the prior
  draw and after every corrector and predictor update, with t the time the state has reached
  (0 after the last predictor step). ``controllable.py`` uses it for inpainting and colorization.
  It must be a pytree callable (e.g. a ``flax.struct`` dataclass) to be traced rather than static.
  """
  shape = _check_shape(shape)
  predictor_fn = predictors_lib.get_predictor(predictor)
  corrector_fn = correctors_lib.get_corrector(corrector)
  if predictor_fn is None and corrector_fn is None:
    raise ValueError("predictor='none' and corrector='none' leave nothing to do; choose at least one.")
  if predictor == "ancestral_sampling":
    predictors_lib.check_ancestral(sde, probability_flow)
  if corrector_fn is not None and n_steps < 1:
    raise ValueError(f"n_steps (corrector steps per time) must be >= 1; got {n_steps}.")
  if corrector_fn is not None:
    correctors_lib.langevin_alpha(sde, jnp.zeros((1,)))  # raises for SDEs without a Langevin rule
  x = _sample_pc(key, as_traceable(score_fn), sde, snr, eps, constraint, shape=shape,
                 predictor=predictor, corrector=corrector, n_steps=n_steps,
                 probability_flow=probability_flow, denoise=denoise)
  nfe = sde.N * ((predictor_fn is not None) + (corrector_fn is not None) * n_steps)
  return x, {"nfe": nfe}


@functools.partial(jax.jit, static_argnames=("shape", "predictor", "corrector", "n_steps",
                                             "probability_flow", "denoise"))
def _sample_pc(key, score_fn, sde, snr, eps, constraint, *, shape, predictor, corrector, n_steps,
               probability_flow, denoise):
  predictor_fn = predictors_lib.get_predictor(predictor)
  corrector_fn = correctors_lib.get_corrector(corrector)
  keys = sample_keys(key, shape[0])
  prior_keys = fold_in_all(keys, 0)
  step_keys = fold_in_all(keys, 1)
  x = per_sample_prior(prior_keys, sde, shape)  # [B, ...]
  timesteps = pc_timesteps(sde, eps).astype(x.dtype)
  # Time reached after the predictor step at timesteps[i]: the next grid time, 0 after the last.
  next_times = jnp.append(timesteps[1:], jnp.zeros((1,), x.dtype))
  constrain = constraint if constraint is not None else (lambda keys, x, x_mean, t: (x, x_mean))
  x, _ = constrain(fold_in_all(keys, 2), x, x, jnp.full((shape[0],), timesteps[0]))

  def step(i, carry):
    x, x_mean = carry
    t = jnp.full((shape[0],), timesteps[i])  # [B]
    keys_i = fold_in_all(step_keys, i)
    if corrector_fn is not None:
      x, x_mean = corrector_fn(fold_in_all(keys_i, 0), x, t, score_fn=score_fn, sde=sde, snr=snr,
                               n_steps=n_steps)
      x, x_mean = constrain(fold_in_all(keys_i, 2), x, x_mean, t)
    if predictor_fn is not None:
      x, x_mean = predictor_fn(fold_in_all(keys_i, 1), x, t, score_fn=score_fn, sde=sde,
                               probability_flow=probability_flow)
      x, x_mean = constrain(fold_in_all(keys_i, 3), x, x_mean, jnp.full_like(t, next_times[i]))
    return x, x_mean

  x, x_mean = jax.lax.fori_loop(0, sde.N, step, (x, x))
  return x_mean if denoise else x


# --- annealed Langevin dynamics (NCSN) --------------------------------------------------------

def sample_ald(key: Array, score_fn: ScoreFn, sde: VESDE, shape: Sequence[int], *, step_lr: float,
               n_steps_each: int, denoise: bool = True) -> tuple[Array, dict]:
  """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over the N levels of a VE SDE.

  For sigma_i from sigma_max down to sigma_min, ``n_steps_each`` steps of
  x <- x + a_i / 2 s(x, sigma_i) + sqrt(a_i) z with a_i = step_lr sigma_i^2 / sigma_min^2.
  The score at level sigma_i is ``score_fn(x, t_i)`` with sigma(t_i) = sigma_i, t_i = i / (N - 1).
  x starts from the prior N(0, sigma_max^2 I). info['nfe'] = N n_steps_each (+ 1 when denoising). ``denoise`` adds the Tweedie step
  x + sigma_min^2 s(x, sigma_min) (one more score evaluation), as NCSNv2 does.
  """
  shape = _check_shape(shape)
  if not isinstance(sde, VESDE):
    raise ValueError(f"sample_ald anneals over the noise levels of a VESDE; got {type(sde).__name__}. "
                     "Use sample_pc(corrector='ald') for VP / sub-VP SDEs.")
  if n_steps_each < 1:
    raise ValueError(f"n_steps_each must be >= 1; got {n_steps_each}.")
  x = _sample_ald(key, as_traceable(score_fn), sde, step_lr, shape=shape,
                  n_steps_each=n_steps_each, denoise=denoise)
  return x, {"nfe": sde.N * n_steps_each + int(denoise)}


@functools.partial(jax.jit, static_argnames=("shape", "n_steps_each", "denoise"))
def _sample_ald(key, score_fn, sde, step_lr, *, shape, n_steps_each, denoise):
  keys = sample_keys(key, shape[0])
  x = per_sample_prior(fold_in_all(keys, 0), sde, shape)
  step_keys = fold_in_all(keys, 1)
  timesteps = jnp.linspace(sde.T, 0.0, sde.N).astype(x.dtype)  # sigma(t_i) = sigma_i, descending
  sigma_min = jnp.asarray(sde.sigma_min, x.dtype)

  def level(i, x):
    t = jnp.full((shape[0],), timesteps[i])
    a = step_lr * (sde.sigma(t) / sigma_min) ** 2  # [B]
    keys_i = fold_in_all(step_keys, i)

    def step(j, x):
      z = predictors_lib.per_sample_normal(fold_in_all(keys_i, j), x)
      return x + batch_broadcast(a / 2, x) * score_fn(x, t) + batch_broadcast(jnp.sqrt(a), x) * z

    return jax.lax.fori_loop(0, n_steps_each, step, x)

  x = jax.lax.fori_loop(0, sde.N, level, x)
  if denoise:
    t_min = jnp.zeros((shape[0],), x.dtype)
    x = x + sigma_min**2 * score_fn(x, t_min)
  return x


# --- probability-flow ODE ---------------------------------------------------------------------

SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
}


def get_solver(method: str):
  try:
    return SOLVERS[method]()
  except KeyError:
    raise ValueError(f"Unknown ODE method {method!r}; valid choices are {sorted(SOLVERS)}.") from None


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
                   method: str, max_steps: int = 16384):
  """Solves dy/dt = vector_field(t, y) for ONE sample y0 (a pytree) from t0 to t1 with diffrax.

  Returns (y(t1), nfe). vmap it over a batch for per-sample step-size control.
  """
  solver = get_solver(method)
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(lambda t, y, args: vector_field(t, y)), solver, t0=t0, t1=t1, dt0=None,
      y0=y0, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  y1 = jax.tree_util.tree_map(lambda v: v[0], sol.ys)
  return y1, solver_nfe(solver, sol.stats["num_steps"])


def probability_flow_drift(score_fn: ScoreFn, sde: SDE):
  """The probability-flow ODE drift (eq. 13) f - g^2 s / 2 for ONE sample: (t, x [...]) -> [...]."""
  reverse = sde.reverse(score_fn, probability_flow=True)

  def drift(t, x):
    t = jnp.full((1,), t, x.dtype)
    return reverse.sde(x[None], t)[0][0]

  return drift


@functools.partial(jax.jit, static_argnames=("method",))
def _solve_pf_ode(score_fn, sde, x, t0, t1, rtol, atol, *, method):
  def solve(score_fn_b, xi):
    drift = probability_flow_drift(score_fn_b, sde)
    return solve_adaptive(drift, xi, t0, t1, rtol=rtol, atol=atol, method=method)

  y, nfe = vmap_over_samples(solve, score_fn, x)
  # Under vmap the solver's while_loop runs until the slowest sample has finished, evaluating
  # the score on the whole batch each time: the batched cost is the largest per-sample NFE.
  return y, jnp.max(nfe)


def encode(score_fn: ScoreFn, sde: SDE, x: Array, *, rtol: float = 1e-5, atol: float = 1e-5,
           method: str = "tsit5", eps: float = 1e-3) -> tuple[Array, dict]:
  """Maps data x [B, ...] (at time eps) to latents z = x(T) along the probability-flow ODE.

  Returns (z, {'nfe'}). Step-size control is per sample (vmap): z_b depends on x_b alone.
  """
  z, nfe = _solve_pf_ode(as_traceable(score_fn), sde, x, eps, sde.T, rtol, atol, method=method)
  return z, {"nfe": nfe}


def decode(score_fn: ScoreFn, sde: SDE, z: Array, *, rtol: float = 1e-5, atol: float = 1e-5,
           method: str = "tsit5", eps: float = 1e-3) -> tuple[Array, dict]:
  """Maps latents z [B, ...] (at time T) back to data x(eps); the inverse of ``encode``."""
  x, nfe = _solve_pf_ode(as_traceable(score_fn), sde, z, sde.T, eps, rtol, atol, method=method)
  return x, {"nfe": nfe}


def sample_ode(key: Array, score_fn: ScoreFn, sde: SDE, shape: Sequence[int], *, rtol: float = 1e-5,
               atol: float = 1e-5, method: str = "tsit5", denoise: bool = True,
               eps: float = 1e-3) -> tuple[Array, dict]:
  """Probability-flow ODE sampler: z ~ prior, x = decode(z), then optionally one reverse-diffusion step.

  Solved on device by diffrax with per-sample adaptive step control (vmap over the batch).
  Returns (x, {'nfe'}); nfe counts batched score evaluations: the largest per-sample count of the
  adaptive solve (see ``solver_nfe``), plus one for the denoising step.
  """
  shape = _check_shape(shape)
  get_solver(method)
  x, nfe = _sample_ode(key, as_traceable(score_fn), sde, rtol, atol, eps, shape=shape,
                       method=method, denoise=denoise)
  return x, {"nfe": nfe}


@functools.partial(jax.jit, static_argnames=("shape", "method", "denoise"))
def _sample_ode(key, score_fn, sde, rtol, atol, eps, *, shape, method, denoise):
  keys = sample_keys(key, shape[0])
  z = per_sample_prior(fold_in_all(keys, 0), sde, shape)
  x, nfe = _solve_pf_ode(score_fn, sde, z, sde.T, eps, rtol, atol, method=method)
  if denoise:
    # Reference "noise removal": the noise-free mean of one reverse-diffusion step at eps.
    t = jnp.full((shape[0],), eps, x.dtype)
    rev_f, _ = sde.reverse(score_fn, probability_flow=False).discretize(x, t)
    x = x - rev_f
    nfe = nfe + 1
  return x, nfe
