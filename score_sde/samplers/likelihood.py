"""Exact likelihoods through the probability-flow ODE (Song et al., ICLR 2021, Section 4.3, Appendix D.2).

For the ODE dx/dt = F(x, t) = f(x, t) - g(t)^2 s(x, t) / 2 (eq. 13), the instantaneous
change of variables (Chen et al. 2018) gives
  log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div F(x(t), t) dt,
solved as one augmented ODE [x, Delta] with dDelta/dt = div F, from eps up to T, with
log p_T replaced by the prior. The divergence is exact (D Jacobian-vector products) or the
Hutchinson-Skilling estimate v^T (dF/dx) v with one probe v per sample, fixed for the whole solve.

Every sample is solved on its own (vmap), with its own adaptive step control and its own probe
drawn from fold_in(key, b), so its log-likelihood does not depend on the rest of the batch.
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


def log_likelihood(key: Array, model: Model, sde: SDE, x: Array, *,
                   divergence: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                   eps: float = 1e-5, solver: str = "tsit5") -> tuple[Array, Array, Array]:
  """log p(x) in nats per sample via the probability-flow ODE.

  Args:
    key: PRNG key for the Hutchinson probes (probe b from fold_in(key, b)); unused for 'exact'.
    x: data in model space [B, ...], taken as the state at time ``eps``.
    divergence: 'rademacher' or 'gaussian' (Hutchinson-Skilling, unbiased) or 'exact'
      (D forward-mode Jacobian-vector products per evaluation; for small D).
    solver: a diffrax solver of ``ode.SOLVERS``.
  Returns:
    (logp [B], z = x(T) [B, ...], nfe): nfe counts batched evaluations of the augmented field,
    each one score evaluation with its Jacobian-vector product(s).
  """
  if divergence not in DIVERGENCES:
    raise ValueError(f"Unknown divergence {divergence!r}; valid choices are {DIVERGENCES}.")
  ode.get_solver(solver)
  common.check_tolerances(rtol, atol)
  eps = common.resolve_eps(sde, eps)
  return _log_likelihood(key, common.as_model(model), sde, x, rtol, atol, eps,
                         divergence=divergence, solver=solver)


@functools.partial(jax.jit, static_argnames=("divergence", "solver"))
def _log_likelihood(key, model, sde, x, rtol, atol, eps, *, divergence, solver):
  probe_keys = common.sample_keys(key, x.shape[0])

  def one(model_b, xi, k):
    drift = ode.probability_flow_drift(parametrization.as_score_fn(model_b, sde), sde)
    field = _augmented_field(drift, divergence, _probe(k, xi, divergence))
    (z, delta), nfe = ode.solve_adaptive(field, (xi, jnp.zeros((), xi.dtype)), eps, sde.T,
                                         rtol=rtol, atol=atol, solver=solver)
    return z, delta, nfe

  # A non-finite sample would stall its adaptive solve (and so the batch's): it is solved as
  # zeros instead and gets a NaN log-likelihood.
  finite = jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=-1)  # [B]
  x_safe = jnp.where(common.batch_mask(finite, x), x, 0.0)
  z, delta, nfe = common.vmap_over_samples(one, model, x_safe, probe_keys)
  logp = jnp.where(finite, sde.prior_logp(z) + delta, jnp.nan)
  return logp, jnp.where(common.batch_mask(finite, z), z, jnp.nan), jnp.max(nfe)


def bits_per_dim(key: Array, model: Model, sde: SDE, x: Array, *, centered: bool,
                 dequantize: bool = True, n_repeats: int = 1, divergence: str = "rademacher",
                 rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                 solver: str = "tsit5") -> tuple[Array, Array]:
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

  Returns (bpd [B] averaged over repeats, nfe summed over repeats).
  """
  if n_repeats < 1:
    raise ValueError(f"n_repeats must be >= 1; got {n_repeats}.")
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
                                  divergence=divergence, rtol=rtol, atol=atol, eps=eps, solver=solver)
    total_bpd = total_bpd + (-logp / (d * math.log(2.0)) + offset)
    total_nfe = total_nfe + nfe
  return total_bpd / n_repeats, total_nfe
