"""Guided scores for class-conditional sampling (Song et al., ICLR 2021, eq. 14; Ho & Salimans 2022).

  classifier_guidance         score + scale grad_x log p_t(y | x) (eq. 14; scale 1 is Bayes' rule).
  classifier_free_guidance    (1 + w) s(x, t, y) - w s(x, t, null) (Ho & Salimans 2022, eq. 6).

Both return a score function ``score_fn(x [B, ...], t [B])``, so they drive every entry of
``SAMPLERS``. They are pytree callables: jitted samplers trace their arrays (labels, scale) instead
of recompiling for each new value, and they declare their per-sample labels (``per_sample_axes``)
so that per-sample adaptive solvers slice them to each sample.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from score_sde.diffusion import parametrization
from score_sde.diffusion.sde import SDE, ScoreFn
from score_sde.samplers import common

Array = jax.Array
# (x_in [B, ...], sigma [B]) -> class logits [B, K]: a noise-conditional classifier.
LogitsFn = Callable[[Array, Array], Array]
# (x [B, ...], t [B], y [B]) -> log p_t(y | x) [B].
ClassLogProbFn = Callable[[Array, Array, Array], Array]
# (x [B, ...], t [B], y [B]) -> score [B, ...] of a class-conditional model (y may be the null class).
LabelledScoreFn = Callable[[Array, Array, Array], Array]


def classifier_inputs(sde: SDE, x: Array, t: Array) -> tuple[Array, Array]:
  """The VE-equivalent input of a noise-conditional classifier: (x_t / m(t), std(t) / m(t)).

  Since x_t = m(t) x_0 + std(t) z, x_t / m(t) = x_0 + sigma z with sigma = std(t) / m(t): the
  classifier sees the same kind of input under every SDE. For VE, m = 1 and sigma = sigma(t), the
  reference's convention.
  """
  return parametrization.sigma_inputs(sde, x, t)


def classifier_log_prob_fn(logits_fn: LogitsFn, sde: SDE) -> ClassLogProbFn:
  """log p_t(y | x) [B] of a noise-conditional classifier, as ``(x, t, y) -> log_prob``."""

  def log_prob(x, t, y):
    x_in, sigma = classifier_inputs(sde, x, t)
    log_probs = jax.nn.log_softmax(logits_fn(x_in, sigma), axis=-1)  # [B, K]
    return jnp.take_along_axis(log_probs, y[:, None], axis=-1)[:, 0]

  return log_prob


@struct.dataclass
class ClassifierGuidedScore:
  """score(x, t) + scale grad_x log p_t(y | x); see ``classifier_guidance``."""

  score_fn: ScoreFn
  log_prob_fn: ClassLogProbFn
  y: Array  # [B] int class labels
  scale: Array  # scalar

  def per_sample_axes(self):
    return ClassifierGuidedScore(score_fn=common.per_sample_axes(self.score_fn),
                                 log_prob_fn=common.per_sample_axes(self.log_prob_fn), y=0,
                                 scale=None)

  def __call__(self, x: Array, t: Array) -> Array:
    grad = jax.grad(lambda v: jnp.sum(self.log_prob_fn(v, t, self.y)))(x)
    return self.score_fn(x, t) + self.scale * grad


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: ClassLogProbFn, y: Array,
                        scale: float = 1.0) -> ClassifierGuidedScore:
  """The class-conditional score of eq. 14, grad log p_t(x) + scale grad log p_t(y | x).

  scale = 1 is the exact conditional score grad log p_t(x | y) when the classifier is exact;
  scale > 1 sharpens towards the class (Dhariwal & Nichol 2021). ``log_prob_fn`` is e.g.
  ``classifier_log_prob_fn(logits_fn, sde)``; ``y`` [B] holds one label per sample.
  """
  y = jnp.asarray(y, jnp.int32)
  if y.ndim != 1:
    raise ValueError(f"y must hold one class label per sample, shape [B]; got {y.shape}.")
  return ClassifierGuidedScore(score_fn=common.as_traceable(score_fn),
                               log_prob_fn=common.as_traceable(log_prob_fn), y=y,
                               scale=jnp.asarray(scale))


@struct.dataclass
class ClassifierFreeGuidedScore:
  """(1 + w) s(x, t, y) - w s(x, t, null); see ``classifier_free_guidance``."""

  labelled_score_fn: LabelledScoreFn
  y: Array  # [B] int class labels
  null_label: Array  # scalar int: the label of the unconditional model
  weight: Array  # scalar w

  def per_sample_axes(self):
    return ClassifierFreeGuidedScore(
        labelled_score_fn=common.per_sample_axes(self.labelled_score_fn), y=0, null_label=None,
        weight=None)

  def __call__(self, x: Array, t: Array) -> Array:
    b = x.shape[0]
    labels = jnp.concatenate([self.y, jnp.full_like(self.y, self.null_label)])
    # One call on [2B] inputs: conditional and unconditional scores share each network pass.
    both = self.labelled_score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), labels)
    cond, uncond = both[:b], both[b:]
    return (1.0 + self.weight) * cond - self.weight * uncond


def classifier_free_guidance(labelled_score_fn: LabelledScoreFn, y: Array, null_label: int,
                             weight: float) -> ClassifierFreeGuidedScore:
  """Classifier-free guidance (Ho & Salimans 2022, eq. 6) as a plain ``score_fn(x, t)``.

  The guided score is that of p_t(x | y)^(1 + w) / p_t(x)^w, i.e. of p_t(x) p_t(y | x)^(1 + w):
  the same as ``classifier_guidance`` with scale 1 + w and the model's implicit classifier.
  w = 0 is the conditional model. It can drive every sampler of ``SAMPLERS``.
  """
  y = jnp.asarray(y, jnp.int32)
  if y.ndim != 1:
    raise ValueError(f"y must hold one class label per sample, shape [B]; got {y.shape}.")
  return ClassifierFreeGuidedScore(labelled_score_fn=common.as_traceable(labelled_score_fn), y=y,
                                   null_label=jnp.asarray(null_label, jnp.int32),
                                   weight=jnp.asarray(weight))
