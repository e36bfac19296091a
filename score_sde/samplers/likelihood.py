"""Exact likelihoods through the probability-flow ODE (Song et al., ICLR 2021, Section 4.3, Appendix D.2).

For the ODE dx/dt = F(x, t) = f(x, t) - g(t)^2 s(x, t) / 2 (eq. 13), the instantaneous
change of variables (Chen et al. 2018) gives
  log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt,
solved as one augmented ODE [x, Delta] with dDelta/dt = div F, from eps up to T, with
log p_T replaced by the prior. The divergence is exact (D Jacobian-vector products) or the
Hutchinson-Skilling estimate v^T (dF/dx) v with one probe v per sample, fixed for the whole solve.

Step-size control (``step_control``):
  - 'per_sample' (default): every sample is solved on its own (vmap), with its own adaptive step
    control, so its log-likelihood does not depend on the rest of the batch (nor on batch size,
    order or sharding). Under vmap the batch runs until its slowest sample has finished: the batch
    pays the largest per-sample NFE, and finished samples keep being evaluated (masked).
  - 'batch': the whole batch is ONE ODE state [x_1..x_B, Delta_1..Delta_B] with one error norm
    (diffrax's RMS norm over the whole state, as scipy's ``solve_ivp`` on the reference's flattened
    batch), one step size and one NFE for the batch. A sample's result then depends (within the
    tolerance) on the other samples of its batch. Use it for throughput and for parity with the
    reference; use 'per_sample' where results must not depend on batching or sharding.
Either way sample b's probe is drawn from fold_in(key, b).
``model`` is a score function or a ``parametrization.Denoiser``, converted to a score at entry.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from score_sde.diffusion import parametrization
from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE
from score_sde.samplers import common, ode

Array = jax.Array

DIVERGENCES = ("rademacher", "gaussian", "exact")
STEP_CONTROLS = ("per_sample", "batch")


def _probe(key: Array, x: Array, divergence: str) -> Array:
  if divergence == "rademacher":
    return jax.random.rademacher(key, x.shape, x.dtype)
  return jax.random.normal(key, x.shape, x.dtype)


def _augmented_field(drift, divergence: str, probe: Array):
  """(t, (x, Delta)) -> (F(x, t), div F) for ONE sample x [...]."""

  def field(t, state):
    x, _ = state
    f = lambda y: drift(t, y)
    if divergence == "exact":
      flat = lambda y: f(y.reshape(x.shape)).reshape(-1)
      y = x.reshape(-1)
      jac = jax.jacfwd(flat)(y)  # [D, D]
      return f(x), jnp.trace(jac)
    fx, jv = jax.jvp(f, (x,), (probe,))
    return fx, jnp.sum(probe * jv)

  return field


def check_step_control(step_control: str) -> None:
  if step_control not in STEP_CONTROLS:
    raise ValueError(f"Unknown step_control {step_control!r}; valid choices are {STEP_CONTROLS}.")


def batch_field(model: Model, sde: SDE, divergence: str, probes: Array):
  """(t, (x [B, ...], Delta [B])) -> (F(x, t) [B, ...], div F [B]) for the whole batch: the
  per-sample augmented field of ``log_likelihood`` (probes [B, ...]), evaluated as one batched call."""
  model = common.as_model(model)

  def field(t, state):
    x, delta = state

    def one(model_b, xi, di, pi):
      drift = ode.probability_flow_drift(parametrization.as_score_fn(model_b, sde), sde)
      return _augmented_field(drift, divergence, pi)(t, (xi, di))

    return common.vmap_over_samples(one, model, x, delta, probes)

  return field


def probes_for(key: Array, x: Array, divergence: str) -> Array:
  """The Hutchinson probes [B, ...] of ``log_likelihood``: probe b from fold_in(key, b)."""
  return jax.vmap(lambda k, xi: _probe(k, xi, divergence))(common.sample_keys(key, x.shape[0]), x)


def log_likelihood(key: Array, model: Model, sde: SDE, x: Array, *,
                   divergence: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                   eps: float = 1e-5, solver: str = "dopri5",
                   step_control: str = "per_sample") -> tuple[Array, Array, Array]:
  """log p(x) in nats per sample via the probability-flow ODE.

  Args:
    key: PRNG key for the Hutchinson probes (probe b from fold_in(key, b)); unused for 'exact'.
    x: data in model space [B, ...], taken as the state at time ``eps``.
    divergence: 'rademacher' or 'gaussian' (Hutchinson-Skilling, unbiased) or 'exact'
      (D forward-mode Jacobian-vector products per evaluation; for small D).
    solver: a diffrax solver of ``ode.SOLVERS``; the default Dopri5 is the reference's RK45
      pair and took 0.6x Tsit5's evaluations at equal bits/dim (docs/performance.md).
    step_control: 'per_sample' (each sample its own adaptive steps; results independent of the
      batch) or 'batch' (one ODE for the whole batch with one RMS error norm, as the reference's
      scipy RK45; fewer evaluations, but results depend on the batch within the tolerance).
  Returns:
    (logp [B], z = x(T) [B, ...], nfe): nfe (one number for the batch) counts batched
    evaluations of the augmented field, each one score evaluation with its Jacobian-vector
    product(s); with 'per_sample' it is the largest per-sample count, which the batch pays.
  """
  if divergence not in DIVERGENCES:
    raise ValueError(f"Unknown divergence {divergence!r}; valid choices are {DIVERGENCES}.")
  check_step_control(step_control)
  ode.get_solver(solver)
  common.check_tolerances(rtol, atol)
  eps = common.resolve_eps(sde, eps)
  logp, z, nfe = _log_likelihood(key, common.as_model(model), sde, x, rtol, atol, eps,
                                 divergence=divergence, solver=solver, step_control=step_control)
  return logp, z, jnp.max(nfe)


@functools.partial(jax.jit, static_argnames=("divergence", "solver", "step_control"))
def _log_likelihood(key, model, sde, x, rtol, atol, eps, *, divergence, solver, step_control):
  """(logp [B], z [B, ...], nfe): nfe [B] per sample for 'per_sample', a scalar for 'batch'."""
  # A non-finite sample would stall its adaptive solve (and so the batch's): it is solved as
  # zeros instead and gets a NaN log-likelihood.
  finite = jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=-1)  # [B]
  x_safe = jnp.where(common.batch_mask(finite, x), x, 0.0)
  probes = probes_for(key, x_safe, divergence)

  if step_control == "batch":
    field = batch_field(model, sde, divergence, probes)
    (z, delta), nfe = ode.solve_adaptive(
        field, (x_safe, jnp.zeros(x.shape[:1], x.dtype)), eps, sde.T, rtol=rtol, atol=atol,
        solver=solver)
  else:
    def one(model_b, xi, pi):
      drift = ode.probability_flow_drift(parametrization.as_score_fn(model_b, sde), sde)
      field = _augmented_field(drift, divergence, pi)
      (z, delta), nfe = ode.solve_adaptive(field, (xi, jnp.zeros((), xi.dtype)), eps, sde.T,
                                           rtol=rtol, atol=atol, solver=solver)
      return z, delta, nfe

    z, delta, nfe = common.vmap_over_samples(one, model, x_safe, probes)
  logp = jnp.where(finite, sde.prior_logp(z) + delta, jnp.nan)
  return logp, jnp.where(common.batch_mask(finite, z), z, jnp.nan), nfe


def bits_per_dim(key: Array, model: Model, sde: SDE, x: Array, *, centered: bool,
                 dequantize: bool = True, n_repeats: int = 1, divergence: str = "rademacher",
                 rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                 solver: str = "dopri5", step_control: str = "per_sample") -> tuple[Array, Array]:
  """Negative log-likelihood in bits per dimension of 8-bit data x in [0, 1], shape [B, ...].

  The model sees scaler(x) = 2x - 1 if ``centered`` else x, i.e. ``scale`` [0, 1] shifted, and
    bpd = -log p_model(scaler(x)) / (D ln 2) + 8 - log2(scale),
  where log2(scale) converts the density to [0, 1] units and 8 = log2(256) converts a density on
  [0, 1] into the probability of one of 256 bins per dimension (offset 7 centered,
  8 otherwise).

  With ``dequantize`` the data are (255 x + u) / 256 with u ~ U[0, 1)^D, redrawn for each of
  ``n_repeats`` evaluations (the reference uses 5); the result averages the repeats. The
  dequantized bpd upper-bounds the model's discrete negative log-likelihood in expectation, so it
  is non-negative. Without dequantization the continuous density is evaluated at the 256 grid
  points themselves, where a model of discrete data may put arbitrarily high density (its
  density near the data grows like std(eps)^-D), so -log2 p / D can exceed the offset and the
  "bits/dim" can be negative: it is then not a code length at all.

  ``step_control`` is that of ``log_likelihood`` ('per_sample' or 'batch').

  Returns (bpd [B] averaged over repeats, nfe summed over repeats).
  """
  if n_repeats < 1:
    raise ValueError(f"n_repeats must be >= 1; got {n_repeats}.")
  check_step_control(step_control)
  scale = 2.0 if centered else 1.0
  d = math.prod(x.shape[1:])
  offset = 8.0 - math.log2(scale)
  total_bpd, total_nfe = 0.0, 0
  for r in range(n_repeats):
    key_r = jax.random.fold_in(key, r)
    k_probe, k_deq = jax.random.split(key_r)
    data = x
    if dequantize:
      u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype))(
          common.sample_keys(k_deq, x.shape[0]))
      data = (255.0 * x + u) / 256.0
    logp, _, nfe = log_likelihood(k_probe, model, sde, scale * data - (scale - 1.0),
                                  divergence=divergence, rtol=rtol, atol=atol, eps=eps, solver=solver,
                                  step_control=step_control)
    total_bpd = total_bpd + (-logp / (d * math.log(2.0)) + offset)
    total_nfe = total_nfe + nfe
  return total_bpd / n_repeats, total_nfe
