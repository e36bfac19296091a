"""Consistency models: "Consistency Models" (Song, Dhariwal, Chen & Sutskever, ICML 2023) and
"Improved Techniques for Training Consistency Models" (Song & Dhariwal, ICLR 2024).

A consistency function f(x_σ, σ) maps every point of a probability-flow trajectory to its origin,
with f(x, σ_min) = x. Everything here lives in the σ parametrisation of ``parametrization.py``
(x_σ = x_0 + σ z, σ = std / m), so the objectives work on any SDE of ``sde.py``; the SDE only maps
σ to time for a teacher given as a score function.

  - ``consistency_function``: the parametrisation f = c_skip x + c_out F(c_in x, c_noise)
    (Song et al. 2023, eq. 5 and Appendix C), exact at the boundary σ = σ_min.
  - ``karras_levels`` and the N(k), μ(k) schedules: jit-friendly in the training step k, on a grid
    of fixed length, so the curriculum never recompiles.
  - Objectives, each ``loss_fn(params, key, images, class_labels=None, *, target_params=None,
    step=None) -> (loss, aux)``: ``get_cd_loss_fn`` (distillation, Algorithm 2),
    ``get_ct_loss_fn`` (training, Algorithm 3) and ``get_ict_loss_fn`` (improved training).

Every loss is λ(σ_n) d(f_θ(x_{σ_{n+1}}, σ_{n+1}), f_θ⁻(x̂_{σ_n}, σ_n)) (Song et al. 2023, eq. 7 and
10). The student and target branches see the same noise z and the same dropout key; the target is
under stop_gradient. ``losses.py`` imports this module at its end to add ``OBJECTIVES``; the loss
helpers of ``losses.py`` are imported here inside the builders, so either module may be imported
first.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from score_sde.diffusion import parametrization
from score_sde.diffusion.sde import SDE, batch_broadcast

Array = jax.Array
METRICS = ("l2", "pseudo_huber")
SOLVERS = ("heun", "euler")


# --- parametrisation (Song et al. 2023, eq. 5 and Appendix C) -----------------------------------

def consistency_preconditioning(sigma: Array, sigma_data: float = 0.5,
                                sigma_min: float = 0.002) -> tuple[Array, Array, Array, Array]:
  """(c_skip, c_out, c_in, c_noise), each shaped like σ; c_skip(σ_min) = 1 and c_out(σ_min) = 0."""
  c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
  c_out = (sigma - sigma_min) * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
  c_in = 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def consistency_function(model_fn: Callable, *, sigma_data: float = 0.5,
                         sigma_min: float = 0.002) -> Callable:
  """Wraps any network ``model_fn(params, x, labels, train=, rng=)`` as
  ``f(params, x_σ, σ, train=, rng=, class_labels=) = c_skip x_σ + c_out F(c_in x_σ, c_noise)``
  (eq. 5), so that f(x, σ_min) = x exactly. ``class_labels`` int [B] reach the network only when
  given."""

  def f(params, x_sigma, sigma, train: bool = False, rng: Optional[Array] = None,
        class_labels: Optional[Array] = None):
    c_skip, c_out, c_in, c_noise = consistency_preconditioning(sigma, sigma_data, sigma_min)
    class_kw = {} if class_labels is None else {"class_labels": class_labels}
    out = model_fn(params, batch_broadcast(c_in, x_sigma) * x_sigma, c_noise, train=train, rng=rng,
                   **class_kw)
    return batch_broadcast(c_skip, x_sigma) * x_sigma + batch_broadcast(c_out, x_sigma) * out

  return f


def get_consistency_model(model_fn: Callable, params, *, sigma_data: float = 0.5,
                          sigma_min: float = 0.002,
                          class_labels: Optional[Array] = None) -> parametrization.Denoiser:
  """The consistency function with fixed params (and class labels) as a ``Denoiser``: it has a
  denoiser's signature (x_σ, σ) -> data, and ``samplers.consistency`` takes it."""
  f = consistency_function(model_fn, sigma_data=sigma_data, sigma_min=sigma_min)
  return parametrization.Denoiser(fn=Partial(
      lambda p, x, s: f(p, x, s, class_labels=class_labels), params))


# --- discretisation and curricula ------------------------------------------------------------

def karras_levels(num_levels, max_levels: int, sigma_min: float, sigma_max: float,
                  rho: float = 7.0) -> Array:
  """Ascending Karras levels [max_levels]: σ_i = (σ_min^{1/ρ} + i/(N-1) (σ_max^{1/ρ} -
  σ_min^{1/ρ}))^ρ for i < N = ``num_levels`` (Song et al. 2023, Appendix C), so σ_0 = σ_min and
  σ_{N-1} = σ_max; entries i >= N are padded with σ_max. N may be a traced int32 <= max_levels: the
  shape stays [max_levels], and a changing N never recompiles."""
  i = jnp.arange(max_levels)
  ramp = jnp.minimum(i / (jnp.asarray(num_levels) - 1), 1.0)
  inv_rho = 1.0 / rho
  return (sigma_min**inv_rho + ramp * (sigma_max**inv_rho - sigma_min**inv_rho)) ** rho


def ct_num_levels(k, total_steps: int, s0: int = 2, s1: int = 150) -> Array:
  """N(k) = ⌈√(k/K ((s1 + 1)² - s0²) + s0²) - 1⌉ + 1 (Song et al. 2023, Appendix C), int32: s0 at
  k = 0, s1 + 1 at k = K."""
  k = jnp.asarray(k, jnp.float32)
  n = jnp.sqrt(k / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2)
  return (jnp.ceil(n - 1.0) + 1.0).astype(jnp.int32)


def ct_target_decay(num_levels, s0: int = 2, mu0: float = 0.9) -> Array:
  """μ(k) = exp(s0 log μ0 / N(k)), the target EMA decay of consistency training."""
  return jnp.exp(s0 * math.log(mu0) / jnp.asarray(num_levels, jnp.float32))


def ict_num_levels(k, total_steps: int, s0: int = 10, s1: int = 1280) -> Array:
  """N(k) = min(s0 2^⌊k/K'⌋, s1) + 1 with K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋ (Song & Dhariwal, Sec. 3.4),
  int32. K' is at least 1, so runs shorter than log2⌊s1/s0⌋ + 1 steps still reach s1 + 1."""
  stage = max(total_steps // (math.floor(math.log2(s1 // s0)) + 1), 1)
  doublings = jnp.asarray(k, jnp.int32) // stage
  n = jnp.minimum(s0 * jnp.exp2(doublings.astype(jnp.float32)), s1)  # 2^large -> inf -> s1
  return n.astype(jnp.int32) + 1


def ict_level_probs(sigmas: Array, num_levels, p_mean: float = -1.1, p_std: float = 2.0) -> Array:
  """p(i) ∝ erf((log σ_{i+1} - P_mean)/(√2 P_std)) - erf((log σ_i - P_mean)/(√2 P_std)), the
  lognormal of Song & Dhariwal (Sec. 3.5) discretised on ascending ``sigmas`` [M]; [M - 1], zero
  for the pairs i > N - 2 beyond ``num_levels``."""
  cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
  # erf saturates in float32 far in the tails; the clip keeps rounding from making a mass negative.
  mass = jnp.where(jnp.arange(sigmas.shape[0] - 1) < jnp.asarray(num_levels) - 1,
                   jnp.maximum(cdf[1:] - cdf[:-1], 0.0), 0.0)
  return mass / jnp.sum(mass)


# --- objectives -------------------------------------------------------------------------------

def _check(sigma_min, sigma_max, sigma_data, rho, huber_c) -> None:
  if not 0.0 < sigma_min < sigma_max:
    raise ValueError(f"Consistency losses need 0 < sigma_min < sigma_max; got "
                     f"sigma_min={sigma_min}, sigma_max={sigma_max}.")
  if sigma_data <= 0.0 or rho <= 0.0:
    raise ValueError(f"sigma_data and rho must be > 0; got {sigma_data} and {rho}.")
  if huber_c is not None and huber_c <= 0.0:
    raise ValueError(f"huber_c must be > 0 (or None for 0.00054 √d); got {huber_c}.")


def _check_schedule(total_steps, s0, s1, min_s0) -> None:
  if total_steps < 1:
    raise ValueError(f"total_steps (K of the curriculum) must be >= 1; got {total_steps}.")
  if not min_s0 <= s0 <= s1:
    raise ValueError(f"The curriculum needs {min_s0} <= s0 <= s1; got s0={s0}, s1={s1}.")


def _metric(metric: str, huber_c: Optional[float], reduce_mean: bool) -> Callable:
  """d(a, b) per sample [B]: 'l2' reduces the squared error like ``losses._reducer``;
  'pseudo_huber' is √(‖a - b‖² + c²) - c over the whole sample, c = 0.00054 √d by default."""
  from score_sde.diffusion import losses

  if metric == "l2":
    reduce = losses._reducer(reduce_mean)
    return lambda a, b: reduce(jnp.square(a - b))
  if metric == "pseudo_huber":

    def pseudo_huber(a, b):
      c = 0.00054 * math.sqrt(math.prod(a.shape[1:])) if huber_c is None else huber_c
      sq = jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)
      return jnp.sqrt(sq + c**2) - c

    return pseudo_huber
  raise ValueError(f"Unknown consistency metric {metric!r}; valid choices are {list(METRICS)}.")


def _consistency_loss(model_fn, *, train, num_classes, class_dropout, sigma_min, sigma_max,
                      sigma_data, rho, distance, max_levels, total_steps, num_levels_fn, draw_pair,
                      target_point, weight_fn, target_decay_fn) -> Callable:
  """The loss shared by CD, CT and iCT; they differ in the curriculum N(k) (``num_levels_fn``),
  the pair drawn (``draw_pair(key, sigmas, N, B) -> n [B]``), x̂_{σ_n} (``target_point``), λ
  and μ."""
  from score_sde.diffusion import losses

  losses._check_class_options(num_classes, class_dropout)
  f = consistency_function(model_fn, sigma_data=sigma_data, sigma_min=sigma_min)

  def loss_fn(params, key, images, class_labels=None, *, target_params=None, step=None):
    key, class_kw = losses._class_conditioning(key, class_labels, num_classes, class_dropout)
    k_n, k_z, k_drop = jax.random.split(key, 3)
    batch = images.shape[0]
    num_levels = num_levels_fn(total_steps if step is None else step)
    sigmas = karras_levels(num_levels, max_levels, sigma_min, sigma_max, rho).astype(images.dtype)
    n = draw_pair(k_n, sigmas, num_levels, batch)  # [B] in 0..N-2
    sigma_n, sigma_next = sigmas[n], sigmas[n + 1]  # [B]
    z = jax.random.normal(k_z, images.shape, images.dtype)
    x_next = images + batch_broadcast(sigma_next, images) * z
    x_hat = jax.lax.stop_gradient(target_point(images, z, x_next, sigma_n, sigma_next))
    target = jax.lax.stop_gradient(params if target_params is None else target_params)
    student = f(params, x_next, sigma_next, train=train, rng=k_drop, **class_kw)
    teacher = jax.lax.stop_gradient(f(target, x_hat, sigma_n, train=train, rng=k_drop, **class_kw))
    per_sample = weight_fn(sigma_n, sigma_next) * distance(student, teacher)
    aux = {"losses": per_sample, "num_levels": jnp.asarray(num_levels, jnp.int32),
           "target_decay": jnp.asarray(target_decay_fn(num_levels), jnp.float32)}
    return jnp.mean(per_sample), aux

  return loss_fn


def _uniform_pair(key, sigmas, num_levels, batch):
  return jax.random.randint(key, (batch,), 0, jnp.asarray(num_levels) - 1)


def _unit_weight(sigma_n, sigma_next):
  return jnp.ones_like(sigma_n)


def get_cd_loss_fn(sde: SDE, model_fn: Callable, *, train: bool, teacher: parametrization.Model,
                   reduce_mean: bool = True, num_classes: int = 0, class_dropout: float = 0.0,
                   num_levels: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   sigma_data: float = 0.5, rho: float = 7.0, metric: str = "l2",
                   huber_c: Optional[float] = None, solver: str = "heun",
                   target_decay: float = 0.95) -> Callable:
  """Consistency distillation (Song et al. 2023, Algorithm 2, eq. 7): n ~ U{0..N-2} on the Karras
  grid of N = ``num_levels`` levels, x̂_{σ_n} one Heun (or Euler) step of dx/dσ = (x - D(x, σ))/σ
  from x_{σ_{n+1}} = x_0 + σ_{n+1} z, D the ``teacher`` (a score function of a diffusion model
  trained on ``sde``, or a ``Denoiser``, through ``parametrization.as_denoiser``). The teacher is
  called without class labels. λ = 1; the target network is ``target_params`` (the EMA of decay
  ``target_decay``, reported as aux['target_decay']); ``step`` is unused."""
  _check(sigma_min, sigma_max, sigma_data, rho, huber_c)
  if num_levels < 2:
    raise ValueError(f"num_levels must be >= 2 (one pair of noise levels); got {num_levels}.")
  if solver not in SOLVERS:
    raise ValueError(f"Unknown teacher solver {solver!r}; valid choices are {list(SOLVERS)}.")
  if not 0.0 <= target_decay <= 1.0:
    raise ValueError(f"target_decay is an EMA decay in [0, 1]; got {target_decay}.")
  denoise = parametrization.as_denoiser(teacher, sde)

  def teacher_step(images, z, x, sigma_n, sigma_next):
    del images, z
    h = batch_broadcast(sigma_n - sigma_next, x)  # < 0: from σ_{n+1} down to σ_n
    d = (x - denoise(x, sigma_next)) / batch_broadcast(sigma_next, x)
    x_euler = x + h * d
    if solver == "euler":
      return x_euler
    d_next = (x_euler - denoise(x_euler, sigma_n)) / batch_broadcast(sigma_n, x)
    return x + 0.5 * h * (d + d_next)

  return _consistency_loss(
      model_fn, train=train, num_classes=num_classes, class_dropout=class_dropout,
      sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, rho=rho,
      distance=_metric(metric, huber_c, reduce_mean), max_levels=num_levels, total_steps=1,
      num_levels_fn=lambda step: num_levels, draw_pair=_uniform_pair, target_point=teacher_step,
      weight_fn=_unit_weight, target_decay_fn=lambda n: target_decay)


def _ct_point(images, z, x, sigma_n, sigma_next):
  """x̂_{σ_n} = x_0 + σ_n z with the z of x_{σ_{n+1}} (Song et al. 2023, eq. 10)."""
  return images + batch_broadcast(sigma_n, images) * z


def get_ct_loss_fn(sde: SDE, model_fn: Callable, *, train: bool, total_steps: int,
                   reduce_mean: bool = True, num_classes: int = 0, class_dropout: float = 0.0,
                   s0: int = 2, s1: int = 150, mu0: float = 0.9, sigma_min: float = 0.002,
                   sigma_max: float = 80.0, sigma_data: float = 0.5, rho: float = 7.0,
                   metric: str = "l2", huber_c: Optional[float] = None) -> Callable:
  """Consistency training (Song et al. 2023, Algorithm 3, eq. 10): x_{σ_{n+1}} = x_0 + σ_{n+1} z and
  x̂_{σ_n} = x_0 + σ_n z with the same z, n ~ U{0..N(k)-2}, N(k) = ``ct_num_levels`` at ``step`` k
  of ``total_steps`` (None: the last; steps past it keep s1 + 1), λ = 1, aux['target_decay'] =
  ``ct_target_decay``. The grid has s1 + 1 entries whatever N(k), so the curriculum does not
  recompile. ``sde`` is unused: the
  loss lives in σ."""
  del sde
  _check(sigma_min, sigma_max, sigma_data, rho, huber_c)
  _check_schedule(total_steps, s0, s1, 2)
  if not 0.0 <= mu0 < 1.0:
    raise ValueError(f"mu0 is an EMA decay in [0, 1); got {mu0}.")
  return _consistency_loss(
      model_fn, train=train, num_classes=num_classes, class_dropout=class_dropout,
      sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, rho=rho,
      distance=_metric(metric, huber_c, reduce_mean), max_levels=s1 + 1, total_steps=total_steps,
      num_levels_fn=lambda step: jnp.minimum(ct_num_levels(step, total_steps, s0, s1), s1 + 1),
      draw_pair=_uniform_pair, target_point=_ct_point, weight_fn=_unit_weight,
      target_decay_fn=lambda n: ct_target_decay(n, s0, mu0))


def get_ict_loss_fn(sde: SDE, model_fn: Callable, *, train: bool, total_steps: int,
                    reduce_mean: bool = True, num_classes: int = 0, class_dropout: float = 0.0,
                    s0: int = 10, s1: int = 1280, p_mean: float = -1.1, p_std: float = 2.0,
                    sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                    rho: float = 7.0, huber_c: Optional[float] = None) -> Callable:
  """Improved consistency training (Song & Dhariwal 2024): the doubling curriculum
  ``ict_num_levels``, n drawn from ``ict_level_probs`` (lognormal P_mean, P_std), λ(σ_n) =
  1/(σ_{n+1} - σ_n), the pseudo-Huber metric (c = 0.00054 √d unless ``huber_c``) and no target
  EMA: the target is the stop-gradient student unless ``target_params`` are given
  (aux['target_decay'] = 0). ``reduce_mean`` is unused by the pseudo-Huber metric, ``sde`` by the
  σ-space loss."""
  del sde, reduce_mean
  _check(sigma_min, sigma_max, sigma_data, rho, huber_c)
  _check_schedule(total_steps, s0, s1, 1)
  if p_std <= 0.0:
    raise ValueError(f"p_std must be > 0; got {p_std}.")

  def draw_pair(key, sigmas, num_levels, batch):
    logits = jnp.log(ict_level_probs(sigmas, num_levels, p_mean, p_std))  # -inf beyond N - 2
    return jax.random.categorical(key, logits, shape=(batch,))

  return _consistency_loss(
      model_fn, train=train, num_classes=num_classes, class_dropout=class_dropout,
      sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, rho=rho,
      distance=_metric("pseudo_huber", huber_c, True), max_levels=s1 + 1, total_steps=total_steps,
      num_levels_fn=lambda step: ict_num_levels(step, total_steps, s0, s1), draw_pair=draw_pair,
      target_point=_ct_point, weight_fn=lambda sigma_n, sigma_next: 1.0 / (sigma_next - sigma_n),
      target_decay_fn=lambda n: 0.0)


OBJECTIVES = {"consistency_distillation": get_cd_loss_fn, "consistency_training": get_ct_loss_fn,
              "improved_consistency_training": get_ict_loss_fn}
