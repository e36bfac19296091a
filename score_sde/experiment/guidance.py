"""Class guidance of sampling: classifier-free (Ho & Salimans 2022) or by a noise-conditional
classifier (Song et al. 2021, eq. 14), and the class labels a guided run draws."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from score_sde.diffusion import parametrization
from score_sde.diffusion import sde as sde_lib
from score_sde.experiment import training
from score_sde.samplers import guidance as guidance_lib

GUIDANCE = ("none", "cfg", "classifier")


@dataclasses.dataclass(frozen=True)
class Guidance:
  kind: str  # one of GUIDANCE
  scale: float
  num_classes: int  # classes the labels range over; 0 when unguided
  class_label: int  # >= 0: every sample gets this class; -1: cycle through all classes

  def labels(self, batch_size: int, offset: int = 0) -> np.ndarray | None:
    """Class labels int32 [batch_size] of guided samples, or None when unguided.

    Sample i of a run gets ``class_label``, or (offset + i) mod K when it is -1, so every class is
    equally represented.
    """
    if not self.num_classes:
      return None
    if self.class_label >= 0:
      return np.full((batch_size,), self.class_label, np.int32)
    return ((offset + np.arange(batch_size)) % self.num_classes).astype(np.int32)


def guided_model(guidance: Guidance, sde: sde_lib.SDE, network_model: Callable, model_fn: Callable,
                 params, *, num_classes: int, labels=None,
                 classifier_logits_fn: Callable | None = None):
  """The model a sampler follows: unguided, classifier-free guided or classifier guided.

  ``network_model(model_fn, params, class_labels=None)`` turns the network into a score function
  or a ``Denoiser`` according to its training objective (``parametrization.sampling_model``).
  ``model_fn`` is the network's (class-conditional when ``num_classes`` > 0, then the unguided
  model is the null class's). Guidance needs scores, so a guided model is a score function.
  ``classifier_logits_fn(x_in, sigma)`` is needed for classifier guidance.
  """
  if guidance.kind == "cfg":
    def labelled(x, t, y):
      model = network_model(model_fn, params, class_labels=y)
      return parametrization.as_score_fn(model, sde)(x, t)
    return guidance_lib.classifier_free_guidance(labelled, labels, num_classes, guidance.scale)
  unguided_fn = training.null_class_model_fn(model_fn, num_classes) if num_classes else model_fn
  model = network_model(unguided_fn, params)
  if guidance.kind == "classifier":
    if classifier_logits_fn is None:
      raise ValueError("config.sampling.guidance='classifier' needs a trained noise-conditional "
                       "classifier: run --mode train_classifier on this workdir first.")
    log_prob = guidance_lib.classifier_log_prob_fn(classifier_logits_fn, sde)
    return guidance_lib.classifier_guidance(parametrization.as_score_fn(model, sde), log_prob,
                                            labels, guidance.scale)
  return model
