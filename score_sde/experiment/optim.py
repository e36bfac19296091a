"""Optimiser of the reference training setup: Adam with linear warmup and global-norm clipping."""
from __future__ import annotations

import optax

OPTIMIZERS = ("Adam",)


def learning_rate_schedule(lr: float, warmup: int) -> optax.Schedule:
  """lr * min(step / warmup, 1), with step counting updates already applied (so the first is 0)."""
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return optax.linear_schedule(0.0, lr, transition_steps=warmup)


def get_optimizer(*, optimizer: str = "Adam", lr: float = 2e-4, beta1: float = 0.9,
                  beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                  warmup: int = 5000, grad_clip: float = 1.0) -> optax.GradientTransformation:
  """Adam (decoupled weight decay when non-zero) after clipping by global norm (off if negative)."""
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {optimizer!r} (config.optim.optimizer); valid choices are "
                     f"{list(OPTIMIZERS)}.")
  schedule = learning_rate_schedule(lr, warmup)
  if weight_decay:
    adam = optax.adamw(schedule, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay)
  else:
    adam = optax.adam(schedule, b1=beta1, b2=beta2, eps=eps)
  if grad_clip >= 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam)
  return adam
