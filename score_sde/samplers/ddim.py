"""DDIM: "Denoising Diffusion Implicit Models" (Song, Meng & Ermon, ICLR 2021), for any linear SDE.

Written with the SDE's marginal coefficients (m(t), std(t)) instead of √ᾱ and √(1 - ᾱ), one step
from t to an earlier time s is (eq. 12)

    x_s = m(s) x̂_0 + √(std(s)^2 - c^2) ε̂ + c z,   ε̂ = (x_t - m(t) x̂_0) / std(t),
    c = η std(s) √(1 - e^{2 (λ(t) - λ(s))}),        λ = log(m / std),

where c^2 is η^2 times the variance of q(x_s | x_t, x_0) (eq. 16). η = 1 is ancestral (DDPM-like)
sampling and η = 0 the deterministic DDIM, a first-order discretisation of the probability-flow ODE
(it is DPM-Solver-1). The time grid is any decreasing sequence, e.g. a subsequence of the DDPM steps
(``ddpm_timesteps``). ``ddim_invert`` runs the η = 0 update forwards: x_0 -> x_T.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.diffusion import parametrization
from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE
from score_sde.samplers import common

Array = jax.Array


def uniform_timesteps(sde: SDE, num_steps: int, eps: float | None = None) -> Array:
  """linspace(T, eps, num_steps + 1), descending (eps None: ``sde.default_eps``)."""
  return jnp.linspace(sde.T, common.resolve_eps(sde, eps), num_steps + 1)


def ddpm_timesteps(sde: SDE, num_steps: int, kind: str = "uniform") -> Array:
  """A subsequence of the N discrete steps, as continuous times t_i = i T / (N - 1), descending.

  ``kind`` 'uniform' takes every ⌊N / num_steps⌋-th index, 'quadratic' indices ∝ (i / num_steps)^2
  (Song et al. 2021, Appendix D.2). Index 0 (t = 0) is replaced by the smallest nonzero step.
  """
  n = sde.N
  if not 1 <= num_steps < n:
    raise ValueError(f"num_steps must be in [1, N - 1 = {n - 1}]; got {num_steps}.")
  if kind == "uniform":
    idx = np.arange(0, n, n // num_steps)[:num_steps + 1]
  elif kind == "quadratic":
    idx = np.round(np.linspace(0, np.sqrt(0.8 * n), num_steps + 1) ** 2).astype(int)
  else:
    raise ValueError(f"Unknown kind {kind!r}; valid choices are ['quadratic', 'uniform'].")
  idx = np.unique(np.maximum(idx, 1))
  return jnp.asarray(idx[::-1] * sde.T / (n - 1))


def _check_timesteps(timesteps, descending: bool) -> Array:
  timesteps = jnp.asarray(timesteps)
  if timesteps.ndim != 1 or timesteps.shape[0] < 2:
    raise ValueError(f"timesteps must be a 1-D grid of at least 2 times; got shape {timesteps.shape}.")
  if isinstance(timesteps, jax.core.Tracer):  # a grid computed inside the caller's jit
    return timesteps
  diffs = np.diff(np.asarray(timesteps))
  if not (np.all(diffs < 0) if descending else np.all(diffs > 0)):
    order = "decreasing (from T towards 0)" if descending else "increasing (from eps towards T)"
    raise ValueError(f"timesteps must be strictly {order}; got {np.asarray(timesteps)}.")
  return timesteps


def ddim_step(x0_fn, sde: SDE, x: Array, t: Array, s: Array, eta, z: Optional[Array]) -> Array:
  """One DDIM update x_t -> x_s for scalar times t, s (either direction when eta = 0)."""
  batch = x.shape[0]
  m_t, std_t = sde.marginal_params(t)
  m_s, std_s = sde.marginal_params(s)
  x0 = x0_fn(x, jnp.full((batch,), t, x.dtype))
  eps_hat = parametrization.noise_from_data(x, x0, m_t, std_t)
  x_s = m_s * x0
  if z is None:
    return x_s + std_s * eps_hat
  c = eta * std_s * jnp.sqrt(jnp.clip(-jnp.expm1(2.0 * (sde.log_snr(t) - sde.log_snr(s))), 0.0))
  return x_s + jnp.sqrt(jnp.maximum(std_s**2 - c**2, 0.0)) * eps_hat + c * z


def sample_ddim(key: Array, model: Model, sde: SDE, shape: Sequence[int], *, num_steps: int = 50,
                eta: float = 0.0, timesteps=None, eps: float | None = None,
                denoise: bool = True) -> tuple[Array, dict]:
  """DDIM sampling from x_T ~ prior along ``timesteps`` (default ``uniform_timesteps(sde,
  num_steps, eps)``, eps None: ``sde.default_eps``).

  ``denoise`` returns x̂_0 = E[x_0 | x_t] at the last time (one more evaluation) instead of x_t
  there. Returns (x [B, ...], {'nfe': len(timesteps) - 1 (+ 1 when denoising)}).
  """
  shape = common.check_shape(shape)
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must be in [0, 1]; got {eta}.")
  if timesteps is None:
    timesteps = uniform_timesteps(sde, num_steps, eps)
  timesteps = _check_timesteps(timesteps, descending=True)
  x = _sample_ddim(key, common.as_model(model), sde, timesteps, eta, shape=shape,
                   stochastic=eta > 0, denoise=denoise)
  return x, {"nfe": timesteps.shape[0] - 1 + int(denoise)}


@functools.partial(jax.jit, static_argnames=("shape", "stochastic", "denoise"))
def _sample_ddim(key, model, sde, timesteps, eta, *, shape, stochastic, denoise):
  dtype = common.default_dtype()
  x0_fn = parametrization.data_prediction(model, sde)
  keys = common.sample_keys(key, shape[0])
  timesteps = timesteps.astype(dtype)
  x = common.prior_sample(keys, sde, shape, dtype)

  def step(x, inputs):
    i, t, s = inputs
    z = common.per_sample_normal(common.fold_in_all(keys, i + 1), shape, dtype) if stochastic else None
    return ddim_step(x0_fn, sde, x, t, s, eta, z), None

  n = timesteps.shape[0] - 1
  x, _ = jax.lax.scan(step, x, (jnp.arange(n), timesteps[:-1], timesteps[1:]))
  if denoise:
    x = x0_fn(x, jnp.full((shape[0],), timesteps[-1], dtype))
  return x


def ddim_ode(model: Model, sde: SDE, x: Array, timesteps) -> tuple[Array, dict]:
  """The η = 0 update along a strictly monotone grid from x at timesteps[0]: decreasing times
  generate, increasing times invert. Returns (x at timesteps[-1], {'nfe'})."""
  timesteps = jnp.asarray(timesteps)
  descending = bool(timesteps.shape[0] > 1 and timesteps[1] < timesteps[0])
  timesteps = _check_timesteps(timesteps, descending=descending)
  x = _ddim_ode(common.as_model(model), sde, x, timesteps.astype(x.dtype))
  return x, {"nfe": timesteps.shape[0] - 1}


def ddim_invert(model: Model, sde: SDE, x: Array, *, num_steps: int = 50, timesteps=None,
                eps: float | None = None) -> tuple[Array, dict]:
  """DDIM inversion: the η = 0 update run from t = eps up to T, mapping data x [B, ...] to x_T.

  Generating from the result with the reversed grid (``ddim_ode``) returns x up to the O(1/num_steps)
  error of the two first-order discretisations. Returns (x_T, {'nfe'}).
  """
  if timesteps is None:
    timesteps = uniform_timesteps(sde, num_steps, eps)[::-1]
  timesteps = _check_timesteps(timesteps, descending=False)
  return ddim_ode(model, sde, x, timesteps)


@jax.jit
def _ddim_ode(model, sde, x, timesteps):
  x0_fn = parametrization.data_prediction(model, sde)
  step = lambda x, ts: (ddim_step(x0_fn, sde, x, ts[0], ts[1], 0.0, None), None)
  x, _ = jax.lax.scan(step, x, (timesteps[:-1], timesteps[1:]))
  return x
