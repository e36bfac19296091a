"""Training the noise-conditional classifier p_t(y | x(t)) of classifier guidance (Song et al. 2021, eq. 14).

The classifier sees noisy data exactly as guidance will show it: t ~ U(eps, T), x_t = m(t) x_0 +
std(t) z, input ``guidance.classifier_inputs(sde, x_t, t)`` = (x_t / m, sigma = std / m). The loss
is the cross-entropy of the true labels, so the minimiser is the exact p_t(y | x_t).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from score_sde.samplers import guidance
from score_sde.diffusion.sde import SDE

Array = jax.Array
# (params, x_in [B, ...], sigma [B]) -> logits [B, K]
ClassifierFn = Callable[[dict, Array, Array], Array]


@struct.dataclass
class ClassifierState:
  step: Array  # int32 scalar
  params: dict
  opt_state: optax.OptState


def get_classifier_fn(module) -> ClassifierFn:
  """``(params, x_in, sigma) -> logits`` of a linen classifier (NoiseConditionalWideResNet)."""
  return lambda params, x_in, sigma: module.apply({"params": params}, x_in, sigma)


def init_classifier_state(key: Array, module, optimizer, input_shape) -> ClassifierState:
  x = jnp.zeros(input_shape, jnp.float32)
  params = module.init(key, x, jnp.ones(input_shape[:1], jnp.float32))["params"]
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=optimizer.init(params))


def noisy_classifier_loss_fn(sde: SDE, classifier_fn: ClassifierFn, eps: float = 1e-5):
  """``loss(params, key, images [B, ...], labels [B]) -> (mean cross-entropy, {'accuracy'})``."""

  def loss_fn(params, key, images, labels):
    k_t, k_z = jax.random.split(key)
    t = jax.random.uniform(k_t, (images.shape[0],), images.dtype, minval=eps, maxval=sde.T)
    return noisy_classifier_loss_at(sde, classifier_fn, params, k_z, images, labels, t)

  return loss_fn


def noisy_classifier_loss_at(sde: SDE, classifier_fn: ClassifierFn, params, key, images, labels,
                             t) -> tuple[Array, dict]:
  """Cross-entropy and accuracy of the classifier on x_t drawn at the given times t [B]."""
  mean, std = sde.marginal_prob(images, t)
  x_t = mean + std.reshape((-1,) + (1,) * (images.ndim - 1)) * jax.random.normal(
      key, images.shape, images.dtype)
  x_in, sigma = guidance.classifier_inputs(sde, x_t, t)
  logits = classifier_fn(params, x_in, sigma)  # [B, K]
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, axis=-1) == labels  # [B]
  return jnp.mean(losses), {"accuracy": jnp.mean(correct), "correct": correct, "losses": losses}


def make_classifier_step(loss_fn, optimizer) -> Callable:
  """``step(state, images, labels, key) -> (state, {'loss', 'accuracy'})``; noise from fold_in(key, step)."""

  def step(state: ClassifierState, images, labels, key):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, jax.random.fold_in(key, state.step), images, labels)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = ClassifierState(step=state.step + 1,
                                params=optax.apply_updates(state.params, updates),
                                opt_state=opt_state)
    return new_state, {"loss": loss, "accuracy": aux["accuracy"]}

  return step
