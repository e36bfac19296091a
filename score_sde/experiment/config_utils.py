"""The edge where a ConfigDict becomes explicit library objects (SDE, model, optimiser, loss).

Nothing past this module reads ``config``; every name in a config is checked here, with an error
naming the field and the valid choices.
"""
from __future__ import annotations

from typing import Any, Iterable

from score_sde.diffusion import losses
from score_sde.experiment import from_config, optim


def check_choice(value: Any, choices: Iterable, field: str) -> None:
  """Raises ValueError naming ``field`` when ``value`` is not one of ``choices``."""
  choices = list(choices)
  if value not in choices:
    raise ValueError(f"{field}={value!r} is not valid; choose one of {choices}.")


def sampling_eps(config) -> float:
  """Smallest time of sampling: the SDE's ``default_eps`` (1e-5 for VE, 1e-3 for VP and sub-VP)."""
  return from_config.get_sde(config).default_eps


def get_optimizer(config):
  o = config.optim
  return optim.get_optimizer(optimizer=o.optimizer, lr=o.lr, beta1=o.beta1, beta2=o.get("beta2", 0.999),
                             eps=o.eps, weight_decay=o.weight_decay, warmup=o.warmup,
                             grad_clip=o.grad_clip)


def num_classes(config) -> int:
  """``config.model.num_classes``: 0 for an unconditional score network (the default)."""
  return config.model.get("num_classes", 0)


def get_loss_fn(config, sde, model_fn, *, train: bool):
  """The training loss; class-conditional (with ``training.class_dropout``) if ``num_classes`` > 0."""
  t = config.training
  return losses.get_loss_fn(sde, model_fn, train=train, reduce_mean=t.reduce_mean,
                            continuous=t.continuous, likelihood_weighting=t.likelihood_weighting,
                            num_classes=num_classes(config),
                            class_dropout=t.get("class_dropout", 0.0))


def image_shape(config, batch_size: int) -> tuple[int, int, int, int]:
  d = config.data
  return (batch_size, d.image_size, d.image_size, d.num_channels)


def pc_options(config) -> dict:
  """Keyword options of ``pc.sample_pc`` from ``config.sampling`` (reference field names)."""
  s = config.sampling
  return dict(predictor=s.predictor, corrector=s.corrector, snr=s.snr, n_steps_each=s.n_steps_each,
              probability_flow=s.probability_flow, denoise=s.noise_removal,
              eps=sampling_eps(config))


def _pc_sampler(config, sde, score_fn, shape, key):
  from score_sde.samplers import pc

  return pc.sample_pc(key, score_fn, sde, shape, **pc_options(config))


def _ode_sampler(config, sde, score_fn, shape, key):
  from score_sde.samplers import ode

  s = config.sampling
  return ode.sample_ode(key, score_fn, sde, shape, rtol=s.get("rtol", 1e-5),
                        atol=s.get("atol", 1e-5), solver=s.get("ode_method", "tsit5"),
                        denoise=s.noise_removal, eps=sampling_eps(config))


SAMPLING_METHODS = {"pc": _pc_sampler, "ode": _ode_sampler}


GUIDANCE = ("none", "cfg", "classifier")


def guidance_classes(config) -> int:
  """Number of classes that ``config.sampling.guidance`` draws labels from (0 when unguided)."""
  guidance = config.sampling.guidance
  check_choice(guidance, GUIDANCE, "config.sampling.guidance")
  if guidance == "cfg":
    if not num_classes(config):
      raise ValueError("config.sampling.guidance='cfg' needs a class-conditional model: train with "
                       "config.model.num_classes > 0 (e.g. configs/digits/ddpmpp_vp_cfg.py).")
    return num_classes(config)
  if guidance == "classifier":
    return config.classifier.num_classes
  return 0


def sample_labels(config, batch_size: int, offset: int = 0):
  """Class labels int32 [batch_size] of guided samples, or None when unguided.

  ``config.sampling.class_label`` >= 0 gives every sample that class; -1 cycles through all
  classes, sample i of a run getting (offset + i) mod K, so every class is equally represented.
  """
  import numpy as np

  k = guidance_classes(config)
  if not k:
    return None
  label = config.sampling.class_label
  if label >= k:
    raise ValueError(f"config.sampling.class_label={label} is not a class of the {k}-class "
                     "guidance; use 0..K-1, or -1 for all classes in turn.")
  if label >= 0:
    return np.full((batch_size,), label, np.int32)
  return ((offset + np.arange(batch_size)) % k).astype(np.int32)


def sampling_score_fn(config, sde, model_fn, params, labels=None, classifier_logits_fn=None):
  """The score a sampler follows: unguided, classifier-free guided or classifier guided.

  ``model_fn`` is the network's (class-conditional when ``config.model.num_classes`` > 0, then
  the unguided score is the null class's). ``classifier_logits_fn(x_in, sigma)`` is needed for
  ``sampling.guidance='classifier'``.
  """
  from score_sde.samplers import guidance as guidance_lib
  from score_sde.experiment import training
  from score_sde.diffusion import sde as sde_module

  guidance = config.sampling.guidance
  check_choice(guidance, GUIDANCE, "config.sampling.guidance")
  continuous, k = config.training.continuous, num_classes(config)
  if guidance == "cfg":
    def labelled(x, t, y):
      return sde_module.get_score_fn(sde, model_fn, params, continuous=continuous,
                                     class_labels=y)(x, t)
    return guidance_lib.classifier_free_guidance(labelled, labels, k, config.sampling.guidance_scale)
  unguided_fn = training.null_class_model_fn(model_fn, k) if k else model_fn
  score_fn = sde_module.get_score_fn(sde, unguided_fn, params, continuous=continuous)
  if guidance == "classifier":
    if classifier_logits_fn is None:
      raise ValueError("config.sampling.guidance='classifier' needs a trained noise-conditional "
                       "classifier: run --mode train_classifier on this workdir first.")
    log_prob = guidance_lib.classifier_log_prob_fn(classifier_logits_fn, sde)
    return guidance_lib.classifier_guidance(score_fn, log_prob, labels,
                                            config.sampling.guidance_scale)
  return score_fn


def get_sampler(config, sde, model_fn, shape, classifier_fn=None):
  """``sample(key, params, labels=None, classifier_params=None) -> (x [shape], info)``, jitted once.

  The method is ``config.sampling.method``, the score ``sampling_score_fn``'s; ``classifier_fn``
  is ``(classifier_params, x_in, sigma) -> logits`` for classifier guidance.
  """
  import jax

  method = config.sampling.method.lower()
  check_choice(method, SAMPLING_METHODS, "config.sampling.method")
  build = SAMPLING_METHODS[method]

  def sample(key, params, labels=None, classifier_params=None):
    logits_fn = None
    if classifier_fn is not None and classifier_params is not None:
      logits_fn = lambda x_in, sigma: classifier_fn(classifier_params, x_in, sigma)
    score_fn = sampling_score_fn(config, sde, model_fn, params, labels, logits_fn)
    return build(config, sde, score_fn, shape, key)

  return jax.jit(sample)
