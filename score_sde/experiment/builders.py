"""The edge where a ConfigDict becomes explicit library objects and frozen option dataclasses.

This is the only module of ``score_sde.experiment`` that reads ``config``: every other one takes the
immutable `Experiment` built here, or explicit arguments. Every name in a config is checked here,
with an error naming the field and the valid choices.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Iterable

import jax

from score_sde import models
from score_sde.diffusion import losses
from score_sde.diffusion import sde as sde_lib
from score_sde.experiment import classifier_training, distributed, optim, training
from score_sde.experiment.experiment import (ClassifierOptions, DataOptions, EvalOptions,
                                             Experiment, ReferenceOptions, TrainOptions)
from score_sde.experiment.guidance import GUIDANCE, Guidance, guided_score_fn
from score_sde.io import datasets
from score_sde.models import classifier as classifier_lib
from score_sde.samplers import sampling


def check_choice(value: Any, choices: Iterable, field: str) -> None:
  """Raises ValueError naming ``field`` when ``value`` is not one of ``choices``."""
  choices = list(choices)
  if value not in choices:
    raise ValueError(f"{field}={value!r} is not valid; choose one of {choices}.")


def get_sde(config) -> sde_lib.SDE:
  """The SDE of ``config.training.sde`` with the noise schedule of ``config.model``."""
  name = config.training.sde.lower()
  check_choice(name, sde_lib.SDES, "config.training.sde")
  m = config.model
  if name == "vesde":
    return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
  return sde_lib.SDES[name](beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)


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


# --- samplers -----------------------------------------------------------------------------------

# Until `score_sde.samplers.SAMPLERS` lands, today's two samplers; at merge this becomes
# `from score_sde.samplers import SAMPLERS`, and the two "today's name" entries of OPTION_FIELDS go.
SAMPLERS = {"pc": sampling.sample_pc, "ode": sampling.sample_ode}

# Keyword-only sampler parameter -> the config.sampling field that sets it, where the names differ.
OPTION_FIELDS = {
    "denoise": "noise_removal",
    "n_steps": "n_steps_each",  # today's name in sample_pc
    "method": "ode_method",  # today's name of sample_ode's solver
}


def sampler_options(config, sample_fn: Callable, sde: sde_lib.SDE) -> dict:
  """The keyword-only options of ``sample_fn`` that config.sampling sets (same name, or OPTION_FIELDS).

  ``eps`` is ``config.sampling.eps`` when set, else the SDE's ``default_eps``.
  """
  s = config.sampling
  options = {}
  for name, parameter in inspect.signature(sample_fn).parameters.items():
    field = OPTION_FIELDS.get(name, name)
    if parameter.kind == parameter.KEYWORD_ONLY and name != "eps" and field in s:
      options[name] = s[field]
  if "eps" in inspect.signature(sample_fn).parameters:
    eps = s.get("eps")
    options["eps"] = sde.default_eps if eps is None else eps
  return options


def get_sampler(config, sde, model_fn, image_shape, guidance: Guidance,
                classifier_fn=None) -> Callable:
  """``sample(key, params, batch_size, labels=None, classifier_params=None) -> (x, info)``, jitted.

  ``config.sampling.method`` picks the sampler of SAMPLERS; its options come from config.sampling
  (`sampler_options`). The score follows ``guidance`` (`guided_score_fn`);
  ``classifier_fn(classifier_params, x_in, sigma) -> logits`` is needed for classifier guidance.
  ``batch_size`` is static: one compilation per batch size.
  """
  method = config.sampling.method.lower()
  check_choice(method, SAMPLERS, "config.sampling.method")
  sample_fn = SAMPLERS[method]
  options = sampler_options(config, sample_fn, sde)
  continuous = config.training.continuous
  k = num_classes(config)

  def sample(key, params, batch_size, labels=None, classifier_params=None):
    logits_fn = None
    if classifier_fn is not None and classifier_params is not None:
      logits_fn = lambda x_in, sigma: classifier_fn(classifier_params, x_in, sigma)
    score_fn = guided_score_fn(guidance, sde, model_fn, params, continuous=continuous,
                               num_classes=k, labels=labels, classifier_logits_fn=logits_fn)
    return sample_fn(key, score_fn, sde, (batch_size, *image_shape), **options)

  return jax.jit(sample, static_argnames="batch_size")


def get_guidance(config, kind: str | None = None) -> Guidance:
  """``config.sampling.guidance`` (or ``kind``), its scale and the classes its labels range over."""
  s = config.sampling
  kind = s.guidance if kind is None else kind
  check_choice(kind, GUIDANCE, "config.sampling.guidance")
  label_classes = 0
  if kind == "cfg":
    if not num_classes(config):
      raise ValueError("config.sampling.guidance='cfg' needs a class-conditional model: train with "
                       "config.model.num_classes > 0 (e.g. configs/digits/ddpmpp_vp_cfg.py).")
    label_classes = num_classes(config)
  elif kind == "classifier":
    label_classes = config.classifier.num_classes
  if label_classes and s.class_label >= label_classes:
    raise ValueError(f"config.sampling.class_label={s.class_label} is not a class of the "
                     f"{label_classes}-class guidance; use 0..K-1, or -1 for all classes in turn.")
  return Guidance(kind=kind, scale=float(s.guidance_scale), num_classes=label_classes,
                  class_label=s.class_label)


# --- options ------------------------------------------------------------------------------------

def dataset_tag(config) -> str:
  """A file-name-safe name of the configured data, e.g. 'cifar10', 'lsun-church_outdoor'."""
  data = config.data
  name = data.dataset.lower()
  detail = {"lsun": data.get("category"), "tfds": data.get("tfds_name"),
            "folder": os.path.basename(os.path.normpath(data.path)) if data.get("path") else None}.get(name)
  return (f"{name}-{detail}" if detail else name).replace("/", "-")


def get_data_options(config) -> DataOptions:
  d = config.data
  return DataOptions(dataset=d.dataset, tag=dataset_tag(config), image_size=d.image_size,
                     num_channels=d.num_channels, centered=d.centered)


def get_train_options(config) -> TrainOptions:
  t, o = config.training, config.optim
  return TrainOptions(
      batch_size=t.batch_size, n_iters=t.n_iters, n_jitted_steps=t.n_jitted_steps,
      log_freq=t.log_freq, eval_freq=t.eval_freq, snapshot_freq=t.snapshot_freq,
      snapshot_freq_for_preemption=t.snapshot_freq_for_preemption,
      snapshot_sampling=t.snapshot_sampling, snapshot_num_samples=t.get("snapshot_num_samples", 64),
      ema_rate=config.model.ema_rate, ema_warmup=config.model.ema_warmup, lr=o.lr, warmup=o.warmup)


def get_classifier_options(config) -> ClassifierOptions | None:
  """``config.classifier``'s training fields; None for a config without that section."""
  c = config.get("classifier")
  if c is None or "n_iters" not in c:
    return None
  return ClassifierOptions(num_classes=c.num_classes, n_iters=c.n_iters, batch_size=c.batch_size,
                           lr=c.lr, warmup=c.warmup, log_freq=c.log_freq, eval_freq=c.eval_freq,
                           snapshot_freq=c.snapshot_freq)


def get_eval_options(config) -> EvalOptions:
  e = config.eval
  return EvalOptions(
      begin_ckpt=e.begin_ckpt, end_ckpt=e.end_ckpt, snapshot_freq=config.training.snapshot_freq,
      checkpoint_timeout_s=e.get("checkpoint_timeout_s", 3600.0), batch_size=e.batch_size,
      enable_loss=e.enable_loss, enable_bpd=e.enable_bpd, enable_sampling=e.enable_sampling,
      num_samples=e.num_samples, bpd_dataset=e.get("bpd_dataset", "test"),
      bpd_num_repeats=e.get("bpd_num_repeats", 5), bpd_rtol=e.get("bpd_rtol", 1e-5),
      bpd_atol=e.get("bpd_atol", 1e-5), enable_precision_recall=e.enable_precision_recall,
      inception_batch_size=e.inception_batch_size)


def get_reference_options(config) -> ReferenceOptions:
  """Which Inception reference statistics the config's FID/KID need (checked where they are used)."""
  e = config.eval
  return ReferenceOptions(path=e.fid_stats_path, split=e.fid_stats_split,
                          num_images=e.fid_stats_num_images, batch_size=e.inception_batch_size)


# --- the experiment -----------------------------------------------------------------------------

def root_keys(config) -> tuple[jax.Array, ...]:
  """PRNGKey(config.seed) and the four keys split from it: (root, init, train, eval, sample)."""
  root_key = jax.random.PRNGKey(config.seed)
  return (root_key, *jax.random.split(root_key, 4))


def get_state_init(config, module=None, optimizer=None) -> Callable[[], training.TrainState]:
  """``init() -> TrainState`` of the config's network and optimiser, replicated over the data mesh.

  Reads only config.seed, .data (image size, channels), .model and .optim, so that a checkpoint
  converter can use it with a reference config.
  """
  module = models.get_model(config) if module is None else module
  optimizer = get_optimizer(config) if optimizer is None else optimizer
  d = config.data
  shape = (1, d.image_size, d.image_size, d.num_channels)
  init = jax.jit(lambda key: training.init_train_state(key, module, optimizer, shape,
                                                       num_classes(config)),
                 out_shardings=distributed.replicated(distributed.data_mesh()))
  return functools.partial(init, root_keys(config)[1])


def build_experiment(config, *, guidance: str | None = None) -> Experiment:
  """Everything ``config`` describes, built once; ``guidance`` overrides config.sampling.guidance."""
  data = get_data_options(config)
  sde = get_sde(config)
  module = models.get_model(config)
  k = num_classes(config)
  model_fn = training.linen_model_fn(module)
  optimizer = get_optimizer(config)
  root_key, _, train_key, eval_key, sample_key = root_keys(config)
  image_shape = (data.image_size, data.image_size, data.num_channels)
  classifier_module = classifier_lib.classifier_from_config(config)
  classifier_fn = classifier_training.get_classifier_fn(classifier_module)
  guidance = get_guidance(config, guidance)
  return Experiment(
      mesh=distributed.data_mesh(), sde=sde, module=module, num_classes=k, model_fn=model_fn,
      unconditional_model_fn=training.null_class_model_fn(model_fn, k) if k else model_fn,
      continuous=config.training.continuous, optimizer=optimizer,
      scaler=datasets.get_data_scaler(config), inverse_scaler=datasets.get_data_inverse_scaler(config),
      seed=config.seed, root_key=root_key, train_key=train_key, eval_key=eval_key,
      sample_key=sample_key, init_state=get_state_init(config, module, optimizer),
      train_loss=get_loss_fn(config, sde, model_fn, train=True),
      eval_loss=get_loss_fn(config, sde, model_fn, train=False),
      guidance=guidance,
      sampler=get_sampler(config, sde, model_fn, image_shape, guidance, classifier_fn),
      pc_options=sampler_options(config, sampling.sample_pc, sde),
      classifier_module=classifier_module, classifier_fn=classifier_fn,
      dataset=functools.partial(datasets.get_dataset, config), data=data,
      training=get_train_options(config), classifier=get_classifier_options(config),
      eval=get_eval_options(config), reference=get_reference_options(config))


def build_training_experiment(config) -> Experiment:
  """`build_experiment` for score-model training: snapshot sample grids of a classifier-guided
  config are unguided, since the classifier is trained separately, often later."""
  return build_experiment(config,
                          guidance="none" if config.sampling.guidance == "classifier" else None)
