"""DPM-Solver (Lu et al., NeurIPS 2022) and DPM-Solver++ (Lu et al., 2022b) for any linear SDE.

With m_t = m(t), std_t = std(t) and λ = log(m_t / std_t) (``sde.log_snr``), the probability-flow ODE
has the exact solution (DPM-Solver eq. 3.4, DPM-Solver++ eq. 9), for h = λ_t - λ_s > 0,

    noise prediction:  x_t = (m_t/m_s) x_s - std_t ∫_0^h e^{h-u} ε̂(λ_s + u) du
    data prediction:   x_t = (std_t/std_s) x_s + m_t ∫_0^h e^{-(h-u)} x̂_0(λ_s + u) du.

Each solver replaces the prediction by a polynomial in λ fitted to k model evaluations and integrates
it exactly: with derivative estimates d_j ≈ d^j/dλ^j (prediction) at λ_s, the integral is
Σ_j φ_j(h) d_j with φ_j(h) = ∫_0^h e^{∓(h-u)} u^j / j! du, computed by the recurrences in
``_phi``. (For order 2 this is the "taylor" form of the authors' code; their Algorithm 1 uses the
cheaper φ_1 ≈ h φ_0 / 2, also second order.)

  * single-step order 1-3 (DPM-Solver-1/2/3, ++ 2S/3S): intermediate points at λ_s + r h with
    r = 1/2 (order 2) or r = 1/3, 2/3 (order 3, derivative from the r = 2/3 point, eq. 3.8);
  * multistep 2M/3M (DPM-Solver++ Algorithm 2): derivatives from divided differences of the last
    2-3 evaluations, lower orders during warm-up and, for short runs, at the end;
  * ``stochastic``: SDE-DPM-Solver(++) for the reverse SDE (Lu et al. 2022b, Appendix; Gonzalez
    et al. 2023). Data prediction: x_t = (std_t/std_s) e^{-h} x_s + m_t Σ_j ψ_j d_j + std_t √(1 - e^{-2h}) z
    with ψ_j = ∫_0^h 2 e^{-2(h-u)} u^j/j! du; noise prediction: x_t = (m_t/m_s) x_s - 2 std_t Σ_j φ_j d_j
    + std_t √(e^{2h} - 1) z. Single-step only at order 1 (higher single-step orders would need the
    Brownian path at the intermediate points); multistep at any order.

Time grids (``get_timesteps``): uniform in t, uniform in λ (logSNR), or the EDM ρ-schedule in
σ = e^{-λ}, all mapped back to t with ``parametrization.t_of_log_snr``. VP, sub-VP and VE are handled alike;
for VE m = 1 and λ = -log σ(t).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from score_sde.diffusion import parametrization
from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE
from score_sde.samplers import common, edm

Array = jax.Array

SPACINGS = ("time", "logsnr", "karras")
PREDICTIONS = ("data", "noise")
VARIANTS = ("singlestep", "multistep")


def get_timesteps(sde: SDE, num_steps: int, spacing: str = "logsnr", eps: float | None = None,
                  rho: float = 7.0) -> Array:
  """A decreasing grid t_0 = T > ... > t_num_steps = eps, [num_steps + 1] (eps None: ``sde.default_eps``).

  'time': uniform in t; 'logsnr': uniform in λ(t) (DPM-Solver's default for images);
  'karras': EDM eq. 5 in σ = std / m with exponent ρ.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1; got {num_steps}.")
  if spacing not in SPACINGS:
    raise ValueError(f"Unknown spacing {spacing!r}; valid choices are {list(SPACINGS)}.")
  dtype = common.default_dtype()
  return _timesteps(sde, jnp.asarray(common.resolve_eps(sde, eps), dtype), jnp.asarray(rho, dtype),
                    num_steps=num_steps, spacing=spacing)


@functools.partial(jax.jit, static_argnames=("num_steps", "spacing"))
def _timesteps(sde: SDE, eps: Array, rho: Array, *, num_steps: int, spacing: str) -> Array:
  """get_timesteps' grid, compiled: inverting λ(t) op by op took ~0.1 s a call on a CPU."""
  T = jnp.asarray(sde.T, eps.dtype)
  if spacing == "time":
    return jnp.linspace(T, eps, num_steps + 1)
  if spacing == "logsnr":
    lam = jnp.linspace(sde.log_snr(T), sde.log_snr(eps), num_steps + 1)
  else:  # karras
    sigma_min, sigma_max = edm.sigma_range(sde, eps)
    lam = -jnp.log(edm.karras_sigmas(num_steps + 1, sigma_min, sigma_max, rho))
  t = parametrization.t_of_log_snr(sde, lam)
  return t.at[0].set(T).at[-1].set(eps)  # exact end points


def _phi(h: Array, order: int, rate: float, data: bool) -> list[Array]:
  """[φ_0, ..., φ_{order-1}], φ_j = ∫_0^h rate e^{-rate (h-u)} u^j / j! du for data prediction and
  ∫_0^h e^{h-u} u^j / j! du for noise prediction. By parts: data φ_0 = -expm1(-rate h),
  φ_j = h^j / j! - φ_{j-1} / rate; noise φ_0 = expm1(h), φ_j = φ_{j-1} - h^j / j!."""
  if data:
    phis = [-jnp.expm1(-rate * h)]
    for j in range(1, order):
      phis.append(h**j / math.factorial(j) - phis[-1] / rate)
  else:
    phis = [jnp.expm1(h)]
    for j in range(1, order):
      phis.append(phis[-1] - h**j / math.factorial(j))
  return phis


class _Update:
  """The exponential-integrator step s -> t for a given prediction type and (O/S)DE."""

  def __init__(self, sde: SDE, data: bool, stochastic: bool):
    self.sde, self.data, self.stochastic = sde, data, stochastic

  def __call__(self, x, s, t, derivs, z=None):
    """x_t from x_s [B, ...] and derivative estimates [d_0, ...] of the prediction at λ_s."""
    m_s, std_s = self.sde.marginal_params(s)
    m_t, std_t = self.sde.marginal_params(t)
    h = self.sde.log_snr(t) - self.sde.log_snr(s)
    phis = _phi(h, len(derivs), 2.0 if self.stochastic else 1.0, self.data)
    integral = sum(p * d for p, d in zip(phis, derivs))
    if self.data:
      linear = std_t / std_s * (jnp.exp(-h) if self.stochastic else 1.0)
      x_t = linear * x + m_t * integral
      noise_std = std_t * jnp.sqrt(-jnp.expm1(-2.0 * h))
    else:
      x_t = m_t / m_s * x - (2.0 if self.stochastic else 1.0) * std_t * integral
      noise_std = std_t * jnp.sqrt(jnp.expm1(2.0 * h))
    if self.stochastic:
      x_t = x_t + noise_std * z
    return x_t


def _prediction_fn(model, sde: SDE, data: bool):
  if data:
    return parametrization.data_prediction(model, sde)
  return parametrization.noise_prediction(model, sde)


def sample_dpm_solver(key: Array, model: Model, sde: SDE, shape: Sequence[int], *,
                      num_steps: int = 20, order: int = 2, variant: str = "multistep",
                      predict: str = "data", spacing: str = "logsnr", stochastic: bool = False,
                      eps: float | None = None, rho: float = 7.0, lower_order_final: bool = True,
                      timesteps=None, denoise: bool = True) -> tuple[Array, dict]:
  """Samples with DPM-Solver (``predict='noise'``) or DPM-Solver++ (``predict='data'``).

  ``variant`` 'multistep' (1 evaluation per step; order 3 = 3M) or 'singlestep' (``order``
  evaluations per step). ``lower_order_final`` uses order 1 on the last step and at most order 2
  on the one before when num_steps < 15 (the authors' stabilisation for few steps). ``timesteps``
  overrides the grid ``get_timesteps(sde, num_steps, spacing, eps, rho)`` (decreasing; eps None:
  ``sde.default_eps``). ``denoise`` returns x̂_0 = E[x_0 | x_eps] at the last time (one more
  evaluation) instead of x_eps. Returns (x [B, ...], {'nfe', 'timesteps'}).
  """
  shape = common.check_shape(shape)
  if order not in (1, 2, 3):
    raise ValueError(f"order must be 1, 2 or 3; got {order}.")
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; valid choices are {list(VARIANTS)}.")
  if predict not in PREDICTIONS:
    raise ValueError(f"Unknown predict {predict!r}; valid choices are {list(PREDICTIONS)}.")
  if stochastic and variant == "singlestep" and order > 1:
    raise ValueError("The stochastic (SDE) variant is single-step only at order 1; use "
                     "variant='multistep' for higher orders.")
  if timesteps is None:
    timesteps = get_timesteps(sde, num_steps, spacing, eps, rho)
  timesteps = jnp.asarray(timesteps, common.default_dtype())
  n = timesteps.shape[0] - 1
  sample = _multistep if variant == "multistep" else _singlestep
  model = common.as_model(model)
  x = sample(key, model, sde, timesteps, shape=shape, order=order, data=predict == "data",
             stochastic=stochastic, lower_order_final=lower_order_final and n < 15)
  nfe = n if variant == "multistep" else order * n
  if denoise:
    x = _final_denoise(model, sde, x, timesteps[-1])
    nfe += 1
  return x, {"nfe": nfe, "timesteps": timesteps}


@jax.jit
def _final_denoise(model, sde, x, t):
  return parametrization.data_prediction(model, sde)(x, jnp.full((x.shape[0],), t, x.dtype))


@functools.partial(jax.jit, static_argnames=("shape", "order", "data", "stochastic",
                                             "lower_order_final"))
def _singlestep(key, model, sde, timesteps, *, shape, order, data, stochastic, lower_order_final):
  del lower_order_final  # every single step is self-starting
  dtype = timesteps.dtype
  predict = _prediction_fn(model, sde, data)
  update = _Update(sde, data, stochastic)
  keys = common.sample_keys(key, shape[0])
  batch = shape[0]
  full = lambda t: jnp.full((batch,), t, dtype)

  def t_at(s, h, r):
    return parametrization.t_of_log_snr(sde, sde.log_snr(s) + r * h)

  def step(x, inputs):
    i, s, t = inputs
    z = common.per_sample_normal(common.fold_in_all(keys, i + 1), shape, dtype) if stochastic else None
    h = sde.log_snr(t) - sde.log_snr(s)
    p_s = predict(x, full(s))
    if order == 1:
      return update(x, s, t, [p_s], z), None
    if order == 2:
      r1 = 0.5
      s1 = t_at(s, h, r1)
      p_1 = predict(update(x, s, s1, [p_s]), full(s1))
      return update(x, s, t, [p_s, (p_1 - p_s) / (r1 * h)]), None
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    s1, s2 = t_at(s, h, r1), t_at(s, h, r2)
    p_1 = predict(update(x, s, s1, [p_s]), full(s1))
    p_2 = predict(update(x, s, s2, [p_s, (p_1 - p_s) / (r1 * h)]), full(s2))
    return update(x, s, t, [p_s, (p_2 - p_s) / (r2 * h)]), None

  x = common.prior_sample(keys, sde, shape, dtype)
  n = timesteps.shape[0] - 1
  x, _ = jax.lax.scan(step, x, (jnp.arange(n), timesteps[:-1], timesteps[1:]))
  return x


@functools.partial(jax.jit, static_argnames=("shape", "order", "data", "stochastic",
                                             "lower_order_final"))
def _multistep(key, model, sde, timesteps, *, shape, order, data, stochastic, lower_order_final):
  dtype = timesteps.dtype
  predict = _prediction_fn(model, sde, data)
  update = _Update(sde, data, stochastic)
  keys = common.sample_keys(key, shape[0])
  n = timesteps.shape[0] - 1
  lams = sde.log_snr(timesteps)

  def step(carry, inputs):
    x, p_1, p_2 = carry  # predictions at the two previous grid points
    i, s, t = inputs
    z = common.per_sample_normal(common.fold_in_all(keys, i + 1), shape, dtype) if stochastic else None
    p_0 = predict(x, jnp.full((shape[0],), s, dtype))
    q = jnp.minimum(order, i + 1)
    if lower_order_final:
      q = jnp.minimum(q, n - i)
    # Divided differences in λ (λ_0 = λ(s) > λ_1 > λ_2); unused ones are masked by q below.
    h0 = lams[i] - lams[jnp.maximum(i - 1, 0)]
    h1 = lams[jnp.maximum(i - 1, 0)] - lams[jnp.maximum(i - 2, 0)]
    h0, h1 = jnp.where(h0 > 0, h0, 1.0), jnp.where(h1 > 0, h1, 1.0)
    f01 = (p_0 - p_1) / h0
    f12 = (p_1 - p_2) / h1
    f012 = (f01 - f12) / (h0 + h1)
    zero = jnp.zeros_like(p_0)
    d1 = jnp.where(q >= 3, f01 + h0 * f012, jnp.where(q >= 2, f01, zero))
    derivs = [p_0, d1] if order >= 2 else [p_0]
    if order >= 3:
      derivs.append(jnp.where(q >= 3, 2.0 * f012, zero))
    x = update(x, s, t, derivs, z)
    return (x, p_0, p_1), None

  x = common.prior_sample(keys, sde, shape, dtype)
  zeros = jnp.zeros(shape, dtype)
  (x, _, _), _ = jax.lax.scan(step, (x, zeros, zeros), (jnp.arange(n), timesteps[:-1], timesteps[1:]))
  return x
