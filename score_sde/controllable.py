"""Controllable generation (Song et al., ICLR 2021, Sec. 5 and Appendix I).

Everything here takes a plain ``score_fn(x [B, ...], t [B])``, so it works with a network's score
(``sde.get_score_fn``) and with the exact scores of ``toy.py`` alike.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_sde.sde import SDE, batch_broadcast

Array = jax.Array
# (x_in [B, ...], sigma [B]) -> class logits [B, K]: a noise-conditional classifier.
LogitsFn = Callable[[Array, Array], Array]


def classifier_inputs(sde: SDE, x: Array, t: Array) -> tuple[Array, Array]:
  """The VE-equivalent input of a noise-conditional classifier: (x_t / m(t), std(t) / m(t)).

  Since x_t = m(t) x_0 + std(t) z, x_t / m(t) = x_0 + sigma z with sigma = std(t) / m(t): the
  classifier sees the same kind of input under every SDE. For VE, m = 1 and sigma = sigma(t), the
  reference's convention.
  """
  m, std = sde.marginal_params(t)
  return x / batch_broadcast(m, x), std / m


def classifier_log_prob_fn(logits_fn: LogitsFn, sde: SDE) -> Callable[[Array, Array, Array], Array]:
  """log p_t(y | x) [B] of a noise-conditional classifier, as ``(x, t, y) -> log_prob``."""

  def log_prob(x, t, y):
    x_in, sigma = classifier_inputs(sde, x, t)
    log_probs = jax.nn.log_softmax(logits_fn(x_in, sigma), axis=-1)  # [B, K]
    return jnp.take_along_axis(log_probs, y[:, None], axis=-1)[:, 0]

  return log_prob
