"""Controllable generation (Song et al., ICLR 2021, Sec. 5 and Appendix I; Ho & Salimans 2022).

Everything here takes a plain ``score_fn(x [B, ...], t [B])``, so it works with a network's score
(``sde.get_score_fn``) and with the exact scores of ``toy.py`` alike:

  inpaint / colorize          PC sampling in which the observed coordinates are replaced after
                              every update by a forward-diffused copy of the observation, x_known ~
                              p_0t(. | y) (Appendix I.2-I.3). This "replacement" method is an
                              approximation of sampling from p(x | y): docs/controllable.md gives the
                              bias measured on Gaussians, where the exact conditional is known.
  classifier_guidance         score + scale grad_x log p_t(y | x) (eq. 14; scale 1 is Bayes' rule).
  classifier_free_guidance    (1 + w) s(x, t, y) - w s(x, t, null) (Ho & Salimans 2022, eq. 6).

The guided scores are pytree callables: jitted samplers trace their arrays (labels, scale,
observation) instead of recompiling for each new value.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from score_sde.diffusion import parametrization
from score_sde.samplers import sampling
from score_sde.samplers.predictors import per_sample_normal
from score_sde.diffusion.sde import SDE, ScoreFn, batch_broadcast

Array = jax.Array
# (x_in [B, ...], sigma [B]) -> class logits [B, K]: a noise-conditional classifier.
LogitsFn = Callable[[Array, Array], Array]
# (x [B, ...], t [B], y [B]) -> log p_t(y | x) [B].
ClassLogProbFn = Callable[[Array, Array, Array], Array]
# (x [B, ...], t [B], y [B]) -> score [B, ...] of a class-conditional model (y may be the null class).
LabelledScoreFn = Callable[[Array, Array, Array], Array]

# Orthonormal basis whose first column is the gray direction (1, 1, 1) / sqrt(3); the other two
# span the colour plane (Appendix I.3). x @ COLOR_BASIS decouples gray from colour.
COLOR_BASIS = np.stack([np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0),
                        np.array([-2.0, 1.0, 1.0]) / np.sqrt(6.0),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)], axis=1)  # [3, 3]


# --- inpainting and colorization: PC sampling with replacement ---------------------------------

@struct.dataclass
class LinearObservation:
  """Observed coordinates in an orthonormal channel basis: (x @ basis) * mask == y * mask.

  As a ``sample_pc`` constraint it replaces the observed coordinates by m(t) y + std(t) z: a draw
  from the perturbation kernel p_0t(. | y), which the isotropic noise of the SDE makes valid in
  any orthonormal basis. ``x_mean`` gets the noise-free m(t) y.
  """

  sde: SDE
  y: Array  # [B, ..., C] observed values in the basis (unobserved entries are ignored)
  mask: Array  # broadcastable to y: 1 where observed, 0 where generated
  basis: Array  # [C, C] orthonormal

  def __call__(self, keys: Array, x: Array, x_mean: Array, t: Array) -> tuple[Array, Array]:
    m, std = self.sde.marginal_params(t)
    y_mean = batch_broadcast(m, self.y) * self.y
    y_t = y_mean + batch_broadcast(std, self.y) * per_sample_normal(keys, self.y)
    return self.replace_observed(x, y_t), self.replace_observed(x_mean, y_mean)

  def replace_observed(self, x: Array, values: Array) -> Array:
    """x with its observed coordinates (in the basis) set to ``values``."""
    u = x @ self.basis.astype(x.dtype)  # [B, ..., C] decoupled coordinates
    u = jnp.where(self.mask > 0, values.astype(x.dtype), u)
    return u @ self.basis.T.astype(x.dtype)


def _check_mask(mask, data_shape) -> Array:
  mask = jnp.asarray(mask)
  try:
    np.broadcast_shapes(mask.shape, data_shape)
  except ValueError:
    raise ValueError(f"mask of shape {mask.shape} does not broadcast to the data's shape "
                     f"{data_shape}; use [B, H, W, 1], [H, W, 1] or the data's shape.") from None
  if not isinstance(mask, jax.core.Tracer) and not bool(jnp.all((mask == 0) | (mask == 1))):
    raise ValueError("mask must hold only 0 (generate) and 1 (keep the data) values.")
  return jnp.broadcast_to(mask, data_shape)


def inpaint(key: Array, score_fn: ScoreFn, sde: SDE, data: Array, mask: Array,
            **pc_options) -> tuple[Array, dict]:
  """Fills the coordinates where ``mask == 0`` given ``data`` where ``mask == 1`` (Appendix I.2).

  ``data`` [B, ...] is in the model's (scaled) data space; ``mask`` broadcasts to it.
  ``pc_options`` are those of ``sampling.sample_pc`` (predictor, corrector, snr, n_steps, ...).
  The observed coordinates of the result equal ``data`` when ``denoise`` (the default).
  Returns (x [B, ...], info) as ``sample_pc``.
  """
  data = jnp.asarray(data)
  mask = _check_mask(mask, data.shape).astype(data.dtype)
  basis = jnp.eye(data.shape[-1], dtype=data.dtype)
  observation = LinearObservation(sde=sde, y=data, mask=mask, basis=basis)
  return sampling.sample_pc(key, score_fn, sde, data.shape, constraint=observation, **pc_options)


def to_gray(images: Array) -> Array:
  """The gray image [B, H, W, 1]: the mean of the colour channels of images [B, H, W, 3]."""
  return jnp.mean(images, axis=-1, keepdims=True)


def colorize(key: Array, score_fn: ScoreFn, sde: SDE, gray: Array, **pc_options) -> tuple[Array, dict]:
  """Colour images [B, H, W, 3] whose channel mean is ``gray`` [B, H, W, 1] (Appendix I.3).

  Inpainting in the basis ``COLOR_BASIS``, where the gray coordinate sqrt(3) gray is observed and
  the two colour coordinates are generated. ``gray`` is in the model's data space (for centred
  data, the mean of the centred channels). Returns (x, info) as ``sample_pc``.
  """
  gray = jnp.asarray(gray)
  if gray.ndim != 4 or gray.shape[-1] != 1:
    raise ValueError(f"gray must be [B, H, W, 1] (e.g. controllable.to_gray(images)); got shape "
                     f"{gray.shape}.")
  y = jnp.concatenate([np.sqrt(3.0) * gray, jnp.zeros_like(gray), jnp.zeros_like(gray)], axis=-1)
  mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
  observation = LinearObservation(sde=sde, y=y, mask=mask, basis=jnp.asarray(COLOR_BASIS, gray.dtype))
  return sampling.sample_pc(key, score_fn, sde, y.shape, constraint=observation, **pc_options)


# --- class-conditional sampling -----------------------------------------------------------------

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
    return ClassifierGuidedScore(score_fn=sampling.per_sample_axes(self.score_fn),
                                 log_prob_fn=sampling.per_sample_axes(self.log_prob_fn), y=0,
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
  return ClassifierGuidedScore(score_fn=sampling.as_traceable(score_fn),
                               log_prob_fn=sampling.as_traceable(log_prob_fn), y=y,
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
        labelled_score_fn=sampling.per_sample_axes(self.labelled_score_fn), y=0, null_label=None,
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
  w = 0 is the conditional model. It can drive any sampler (PC, ODE, DDIM, DPM-Solver, ...).
  """
  y = jnp.asarray(y, jnp.int32)
  if y.ndim != 1:
    raise ValueError(f"y must hold one class label per sample, shape [B]; got {y.shape}.")
  return ClassifierFreeGuidedScore(labelled_score_fn=sampling.as_traceable(labelled_score_fn), y=y,
                                   null_label=jnp.asarray(null_label, jnp.int32),
                                   weight=jnp.asarray(weight))
