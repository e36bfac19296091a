"""The edge where a ConfigDict becomes explicit library objects and frozen option dataclasses.

This is the only module that reads ``config``: models/, io/, diffusion/ and samplers/ take keyword
arguments or small frozen dataclasses, and every other module of ``score_sde.experiment`` takes the
immutable `Experiment` built here, or explicit arguments. Every name in a config is checked here,
with an error naming the field and the valid choices.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from score_sde import models
from score_sde.diffusion import consistency, losses, parametrization
from score_sde.diffusion import sde as sde_lib
from score_sde.experiment import classifier_training, config_files, distributed, optim, training
from score_sde.experiment.experiment import (ClassifierOptions, DataOptions, EvalOptions,
                                             Experiment, ReferenceOptions, TrainOptions)
from score_sde.experiment.guidance import GUIDANCE, Guidance, guided_model
from score_sde.io import datasets
from score_sde.models import ncsn
from score_sde.models.classifier import NoiseConditionalWideResNet
from score_sde.models.ncsnpp import NCSNpp
from score_sde.samplers import SAMPLERS, correctors, likelihood, predictors


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
  if name == "rectified_flow":
    return sde_lib.RectifiedFlow(N=m.num_scales)
  return sde_lib.SDES[name](beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)


def get_optimizer(config):
  """config.optim's optimiser; of a ControlNet, on its trainable parameters only."""
  return _controlled_optimizer(config, _optimizer_of(config.optim))


def _controlled_optimizer(config, optimizer):
  if not is_controlnet(config):
    return optimizer
  from score_sde.experiment import controlnet  # pylint: disable=import-outside-toplevel

  return controlnet.freeze_base(optimizer)


def _optimizer_of(o):
  """The optimiser of a config.optim section (a ConfigDict or a recorded dict made one)."""
  return optim.get_optimizer(optimizer=o.optimizer, lr=o.lr, beta1=o.beta1, beta2=o.get("beta2", 0.999),
                             eps=o.eps, weight_decay=o.weight_decay, warmup=o.warmup,
                             grad_clip=o.grad_clip)


def num_classes(config) -> int:
  """``config.model.num_classes``: 0 for an unconditional score network (the default)."""
  return config.model.get("num_classes", 0)


# Objectives whose network sees c_noise = ln(σ)/4 (EDM and consistency preconditioning).
SIGMA_LABEL_OBJECTIVES = ("edm", *consistency.OBJECTIVES)


def objective(config) -> str:
  """``config.training.loss`` (a key of ``losses.OBJECTIVES``); unset, the reference's rule:
  'dsm' for continuous training, else the SDE's discrete loss ('smld' for VE, 'ddpm' for VP)."""
  name = config.training.get("loss")
  if name is None:
    return losses.default_objective(get_sde(config), config.training.continuous)
  check_choice(name, losses.OBJECTIVES, "config.training.loss")
  if name in SIGMA_LABEL_OBJECTIVES:
    m = config.model
    if m.get("embedding_type") == "fourier" or m.get("scale_by_sigma"):
      raise ValueError(f"config.training.loss={name!r} feeds the network c_noise = ln(σ)/4, which "
                       "can be negative: use config.model.embedding_type='positional' and "
                       "config.model.scale_by_sigma=False (e.g. configs/digits/edm.py).")
  return name


def objective_options(config, name: str) -> dict:
  """The options of objective ``name``'s builder (its keyword-only parameters beyond the common
  ones) that the config sets: a field of config.consistency for a consistency objective (and
  ``total_steps`` = training.n_iters), else of config.training (e.g. sigma_data). None keeps the
  builder's default; the CD teacher is built by `get_teacher`."""
  builder = losses.OBJECTIVES[name]
  sections = ([config.consistency] if name in consistency.OBJECTIVES else []) + [config.training]
  common = {"train", "reduce_mean", "num_classes", "class_dropout", "teacher", "continuous",
            "likelihood_weighting"}
  options = {}
  for field, parameter in inspect.signature(builder).parameters.items():
    if parameter.kind != parameter.KEYWORD_ONLY or field in common:
      continue
    section = next((sec for sec in sections if field in sec), config.training)
    value = config.training.n_iters if field == "total_steps" else section.get(field)
    if value is not None:
      options[field] = value
  return options


def get_teacher(config):
  """(teacher model, teacher SDE) of consistency distillation: the newest EMA parameters in
  config.consistency.teacher_workdir of the run configured by config.consistency.teacher_config,
  as its sampler-ready model (a score function or Denoiser, unconditional)."""
  from score_sde.experiment import restore  # restore builds on this module's Experiment

  c = config.consistency
  if not c.get("teacher_workdir"):
    raise ValueError("config.training.loss='consistency_distillation' needs a trained teacher: set "
                     "config.consistency.teacher_workdir (and teacher_config, its config file).")
  teacher = build_experiment(config_files.load_config_file(c.get("teacher_config"),
                                                           "config.consistency.teacher_config"))
  _, params = restore.latest_params(teacher, c.teacher_workdir)
  return teacher.unconditional_model(params), teacher.sde


def get_loss_fn(config, sde, model_fn, *, train: bool):
  """The training loss of ``objective(config)``, with `objective_options`; class-conditional (with
  ``training.class_dropout``) if ``num_classes`` > 0. The CD teacher is loaded when the loss is
  first traced, so building an experiment to sample or evaluate never needs it."""
  t, name = config.training, objective(config)
  build = functools.partial(
      losses.get_loss_fn, name, train=train, reduce_mean=t.reduce_mean, continuous=t.continuous,
      likelihood_weighting=t.likelihood_weighting, num_classes=num_classes(config),
      class_dropout=t.get("class_dropout", 0.0), **objective_options(config, name))
  if name != "consistency_distillation":
    return build(sde, model_fn)

  @functools.cache
  def distillation_loss():
    with jax.ensure_compile_time_eval():  # first called while the train step is being traced
      teacher, teacher_sde = get_teacher(config)
    return build(teacher_sde, model_fn, teacher=teacher)

  return lambda *args, **kwargs: distillation_loss()(*args, **kwargs)


def get_network_model(config, sde) -> Callable:
  """``(model_fn, params, class_labels=None) -> model``: the network as the samplers take it, a
  score function, a velocity turned into a score, or (EDM, consistency) a ``Denoiser``."""
  return functools.partial(parametrization.sampling_model, objective(config), sde,
                           continuous=config.training.continuous,
                           sigma_data=config.training.sigma_data,
                           sigma_min=config.consistency.sigma_min)


# --- score networks ------------------------------------------------------------------------------

def _required(config, section: str, field: str):
  value = config[section].get(field) if section in config else None
  if value is None:
    raise ValueError(f"config.{section}.{field} is required to build model "
                     f"{config.model.name!r}.")
  return value


COMPUTE_DTYPES = ("float32", "bfloat16")
# The networks that compute in their input's dtype and take ``remat`` (accelerator options).
ACCELERATOR_MODELS = ("ncsnpp", "ddpm", "dit")


def _accelerator_model(config, field: str) -> None:
  if config.model.name not in ACCELERATOR_MODELS:
    raise ValueError(f"config.model.{field} is supported by models {list(ACCELERATOR_MODELS)}, "
                     f"not {config.model.name!r}; leave it at its default.")


def compute_dtype(config):
  """``config.model.compute_dtype``: the dtype the network computes in (float32 parameters and
  loss either way; see `training.linen_model_fn`)."""
  m = config.model
  name = m.get("compute_dtype", "float32")
  check_choice(name, COMPUTE_DTYPES, "config.model.compute_dtype")
  if name != "float32":
    _accelerator_model(config, "compute_dtype")
  if m.get("dtype", "float32") != "float32":
    raise ValueError(f"config.model.dtype={m.dtype!r} (DiT) is replaced by "
                     f"config.model.compute_dtype; set that to {m.dtype!r} and model.dtype to "
                     "'float32'.")
  return jnp.dtype(name)


def batch_chunk(config) -> int:
  """``config.model.batch_chunk``: examples per network application (0: the whole batch); see
  `training.linen_model_fn`."""
  chunk = config.model.get("batch_chunk", 0)
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    raise ValueError(f"config.model.batch_chunk must be an integer >= 0 (0: no chunking), got "
                     f"{chunk!r}.")
  return chunk


def _check_remat(config) -> None:
  """``config.model.remat`` (jax.checkpoint per block) needs a network that has the option."""
  if config.model.get("remat", False):
    _accelerator_model(config, "remat")


def _check_group_norm(config) -> None:
  norm = config.model.get("normalization", "GroupNorm")
  if norm != "GroupNorm":
    raise ValueError(f"model {config.model.name!r} uses GroupNorm; got "
                     f"config.model.normalization={norm!r}.")


def _ddpm_fields(config) -> dict:
  """Fields of DDPM, which NCSN++ shares."""
  _check_group_norm(config)
  m = config.model
  return dict(
      nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
      attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
      resamp_with_conv=m.resamp_with_conv, conditional=m.conditional,
      scale_by_sigma=m.scale_by_sigma, centered=_required(config, "data", "centered"),
      nonlinearity=m.get("nonlinearity", "swish"),
      sigma_min=m.get("sigma_min", 0.01), sigma_max=m.get("sigma_max", 50.0),
      num_scales=m.get("num_scales", 1000), num_classes=m.get("num_classes", 0),
      low_res_channels=_low_res_channels(config), remat=bool(m.get("remat", False)))


def _ncsnpp_fields(config) -> dict:
  m = config.model
  embedding_type = m.get("embedding_type", "fourier").lower()
  if embedding_type == "fourier" and not config.get("training", {}).get("continuous", True):
    raise ValueError("ncsnpp: embedding_type='fourier' takes σ labels and needs continuous "
                     "training (config.training.continuous=True); use 'positional' for discrete.")
  return dict(
      **_ddpm_fields(config),
      fir=m.fir, fir_kernel=tuple(m.fir_kernel), skip_rescale=m.skip_rescale,
      resblock_type=m.resblock_type.lower(), progressive=m.progressive.lower(),
      progressive_input=m.progressive_input.lower(),
      progressive_combine=m.progressive_combine.lower(),
      attention_type=m.get("attention_type", "ddpm").lower(), embedding_type=embedding_type,
      fourier_scale=m.get("fourier_scale", 16.0), init_scale=m.init_scale,
      conv_size=m.get("conv_size", 3))


def _refinenet_fields(config) -> dict:
  """Arguments of the NCSN / NCSNv2 constructors of models/ncsn.py."""
  m, name, image_size = config.model, config.model.name, config.data.image_size
  reference = m.get("reference", "jax")
  check_choice(reference, ncsn.REFERENCES, "config.model.reference")
  if name in ncsn.IMAGE_SIZES:
    ncsn.check_image_size(name, image_size, "config.data.image_size")
  fields = dict(
      image_size=image_size, reference=reference, nf=m.nf, normalization=m.normalization,
      nonlinearity=m.nonlinearity.lower(), interpolation=m.get("interpolation", "bilinear"),
      sigma_min=m.sigma_min, sigma_max=m.sigma_max, num_scales=m.num_scales,
      centered=config.data.centered)
  if m.get("scale_by_sigma") is not None:  # else the network's own default
    fields["scale_by_sigma"] = m.scale_by_sigma
  return fields


def _low_res_channels(config) -> int:
  """The low-resolution input channels of a super-resolution network (config.super_resolution)."""
  return config.data.num_channels if get_super_resolution(config) is not None else 0


def get_super_resolution(config):
  """`super_resolution.SuperResolution` of config.super_resolution, or None when factor <= 1."""
  from score_sde.experiment import super_resolution  # pylint: disable=import-outside-toplevel

  s = config.get("super_resolution")
  if s is None or s.factor <= 1:
    return None
  return super_resolution.SuperResolution(factor=s.factor, aug_max=float(s.aug_max),
                                          sample_aug_level=float(s.sample_aug_level))


def is_controlnet(config) -> bool:
  """Whether the model is a frozen base network under a ControlNet (config.controlnet)."""
  return bool(config.get("controlnet", {}).get("control_type"))


def get_controlnet(config):
  """`controlnet.ControlSpec` of config.controlnet, or None without a control type."""
  if not is_controlnet(config):
    return None
  from score_sde.experiment import controlnet  # pylint: disable=import-outside-toplevel

  c = config.controlnet
  return controlnet.ControlSpec(control_type=c.control_type, drop_prob=float(c.drop_prob),
                                control_scale=float(c.control_scale),
                                guidance_scale=float(c.guidance_scale))


def _controlled_module(config, module, model_side: int):
  """The base ``module`` under the ControlNet of config.controlnet (models/controlnet.py)."""
  from score_sde.models import controlnet  # pylint: disable=import-outside-toplevel

  c = config.controlnet
  return controlnet.ControlledModel(
      base=module, controlnet=controlnet.for_backbone(
          module, config.model.name, model_side, config.data.image_size,
          control_depth=c.control_depth, hint_channels=tuple(c.hint_channels)))


def _dit_fields(config) -> dict:
  """Arguments of DiT (models/dit.py); labels are dropped by the loss (training.class_dropout)."""
  m = config.model
  return dict(
      patch_size=m.patch_size, hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
      mlp_ratio=m.get("mlp_ratio", 4.0), learn_sigma=m.get("learn_sigma", False),
      num_classes=m.get("num_classes", 0), low_res_channels=_low_res_channels(config),
      remat=bool(m.get("remat", False)))


# config.model.name -> the constructor arguments of models.MODELS[name].
_MODEL_FIELDS: dict[str, Callable[[Any], dict]] = {
    "ncsnpp": _ncsnpp_fields,
    "ddpm": _ddpm_fields,
    "dit": _dit_fields,
    "ncsn": _refinenet_fields,
    "ncsnv2": _refinenet_fields,
    "ncsnv2_64": _refinenet_fields,
    "ncsnv2_128": _refinenet_fields,
    "ncsnv2_256": _refinenet_fields,
}


def get_model(config):
  """The score network ``config.model.name`` of ``models.MODELS``, with ``config.model`` fields."""
  name = config.model.name
  check_choice(name, models.MODELS, "config.model.name")
  _check_remat(config)
  num_classes = config.model.get("num_classes", 0)
  if num_classes and name not in models.CLASS_CONDITIONAL_MODELS:
    raise ValueError(f"config.model.num_classes={num_classes} (class-conditional training) is "
                     f"supported only by models {list(models.CLASS_CONDITIONAL_MODELS)}, not "
                     f"{name!r}; set config.model.num_classes=0.")
  if num_classes and not config.model.get("conditional", True):
    raise ValueError(f"config.model.num_classes={num_classes} adds a class embedding to the time "
                     "embedding, which config.model.conditional=False removes; set "
                     "config.model.conditional=True or config.model.num_classes=0.")
  model = models.MODELS[name](**_MODEL_FIELDS[name](config))
  if isinstance(model, NCSNpp):
    model.validate()  # an unknown option fails here, not at the first call
  return model


def get_classifier(config) -> NoiseConditionalWideResNet:
  """The noise-conditional classifier of an optional ``config.classifier`` (depth,
  widen_factor, num_classes); missing fields keep the reference's CIFAR-10 WRN-28-10."""
  c = config.get("classifier", None) or {}
  fields = {k: c[k] for k in ("depth", "widen_factor", "num_classes") if k in c}
  return NoiseConditionalWideResNet(**fields)


# --- data ----------------------------------------------------------------------------------------

def data_spec(config) -> datasets.DataSpec:
  """The dataset of ``config.data`` (dataset, image_size, num_channels, path, category,
  tfds_name, data_dir)."""
  d = config.data
  spec = datasets.DataSpec(
      dataset=d.dataset, image_size=d.image_size, num_channels=d.num_channels,
      path=d.get("path"), category=d.get("category"), tfds_name=d.get("tfds_name"),
      data_dir=d.get("data_dir"))
  return datasets.check_data_spec(spec, prefix="config.data.")


def get_data_scaler(config):
  """[0, 1] -> model space, by ``config.data.centered``."""
  return datasets.get_data_scaler(config.data.centered)


def get_data_inverse_scaler(config):
  """Model space -> [0, 1], by ``config.data.centered``."""
  return datasets.get_data_inverse_scaler(config.data.centered)


def get_dataset(config, *, batch_size: int | None = None, evaluation: bool = False,
                uniform_dequantization: bool | None = None, **options) -> datasets.BatchIterator:
  """``datasets.get_dataset`` of ``config.data``.

  ``batch_size`` defaults to ``config.training.batch_size`` (``config.eval.batch_size`` when
  ``evaluation``), ``uniform_dequantization`` to ``config.data.uniform_dequantization``; the
  flips are ``config.data.random_flip``. ``options`` go to ``datasets.get_dataset`` unchanged.
  """
  if batch_size is None:
    batch_size = config.eval.batch_size if evaluation else config.training.batch_size
  if uniform_dequantization is None:
    uniform_dequantization = config.data.uniform_dequantization
  return datasets.get_dataset(data_spec(config), batch_size=batch_size, evaluation=evaluation,
                              random_flip=config.data.random_flip,
                              uniform_dequantization=uniform_dequantization, **options)


# --- checkpoint conversion -----------------------------------------------------------------------

def conversion_kwargs(config) -> dict:
  """``model``, ``image_size`` and ``num_channels``: the io.convert arguments for a config."""
  return dict(model=get_model(config), image_size=config.data.image_size,
              num_channels=config.data.num_channels)


# --- samplers -----------------------------------------------------------------------------------

# Keyword-only sampler option -> the config.sampling field that sets it, where the names differ.
OPTION_FIELDS = {"denoise": "noise_removal"}


def sampler_options(config, sample_fn: Callable) -> dict:
  """The keyword-only options of ``sample_fn`` that config.sampling sets: the field of the same name
  (or OPTION_FIELDS), unless it is None, which keeps the sampler's default (``eps`` None: the SDE's
  ``default_eps``); the consistency sampler of a consistency model defaults to the σ range of
  config.consistency. A required option the config leaves unset is an error naming its field."""
  s = config.sampling
  trained_range = (objective(config) in consistency.OBJECTIVES
                   and sample_fn is SAMPLERS.get("consistency"))
  options = {}
  for name, parameter in inspect.signature(sample_fn).parameters.items():
    if parameter.kind != parameter.KEYWORD_ONLY:
      continue
    field = OPTION_FIELDS.get(name, name)
    value = s.get(field)
    if value is None and trained_range and name in ("sigma_min", "sigma_max"):
      value = config.consistency.get(name)  # the noise levels the consistency model was trained on
    if value is not None:
      options[name] = value
    elif parameter.default is parameter.empty:
      raise ValueError(f"config.sampling.method={s.method!r} needs config.sampling.{field}.")
  return options


def get_sampler(config, sde, model_fn, image_shape, guidance: Guidance,
                classifier_fn=None, decode: Callable | None = None,
                super_resolution=None, controlnet=None, mesh: Mesh | None = None) -> Callable:
  """``sample(key, params, batch_size, labels=None, classifier_params=None) -> (x, info)``, jitted.

  ``config.sampling.method`` picks the sampler of ``samplers.SAMPLERS``; its options come from
  config.sampling (`sampler_options`). The model follows ``guidance`` (`guided_model`);
  ``classifier_fn(classifier_params, x_in, sigma) -> logits`` is needed for classifier guidance.
  ``batch_size`` is static: one compilation per batch size. ``decode`` (latent diffusion) maps the
  sampler's output to images inside the same compiled function. With ``super_resolution`` the
  sampler takes ``low_res`` [B, H/f, W/f, C], augmented at the sampling level with the first half of
  the key. With ``controlnet`` (a `controlnet.ControlSpec`) it takes ``control`` [B, H, W, C_c], the
  control images, at the spec's control and guidance scales. With a ``mesh`` of several devices
  the batch is sampled split over its data axis (`distributed.split_over_batch`) and returned whole
  on every device.
  """
  method = config.sampling.method.lower()
  check_choice(method, SAMPLERS, "config.sampling.method")
  sample_fn = SAMPLERS[method]
  options = sampler_options(config, sample_fn)
  network_model = get_network_model(config, sde)
  k = num_classes(config)

  def sample(key, params, batch_size, labels=None, classifier_params=None, low_res=None,
             control=None):
    network_fn = model_fn
    if controlnet is not None:
      from score_sde.experiment.controlnet import bind  # pylint: disable=import-outside-toplevel
      if control is None:
        raise ValueError("A ControlNet model samples given control [B, H, W, C] (control images).")
      network_fn = bind(model_fn, control, controlnet.control_scale, controlnet.guidance_scale)
    if super_resolution is not None:
      from score_sde.experiment.super_resolution import conditioned_model_fn  # pylint: disable=import-outside-toplevel
      if low_res is None:
        raise ValueError("A super-resolution model samples given low_res [B, H/f, W/f, C].")
      condition_key, key = jax.random.split(key)
      network_fn = conditioned_model_fn(
          model_fn, *super_resolution.sampling_condition(condition_key, sde, low_res))
    logits_fn = None
    if classifier_fn is not None and classifier_params is not None:
      logits_fn = lambda x_in, sigma: classifier_fn(classifier_params, x_in, sigma)
    model = guided_model(guidance, sde, network_model, network_fn, params, num_classes=k,
                         labels=labels, classifier_logits_fn=logits_fn)
    x, info = sample_fn(key, model, sde, (batch_size, *image_shape), **options)
    if mesh is not None:
      x = distributed.split_over_batch(x, mesh)
    x = x if decode is None else decode(x)
    return (x if mesh is None else distributed.gathered(x, mesh)), info

  return jax.jit(sample, static_argnames="batch_size")


def get_sampler_spec(config, guidance: Guidance) -> dict:
  """The JSON-able description of the configured sampling (`Experiment.sampler_spec`)."""
  method = config.sampling.method.lower()
  options = sampler_options(config, SAMPLERS[method]) if method in SAMPLERS else {}
  return {"method": method, **options, "guidance": guidance.kind,
          "guidance_scale": guidance.scale, "class_label": guidance.class_label,
          "seed": config.seed}


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
      ema_rate=config.model.ema_rate, ema_warmup=config.model.ema_warmup, lr=o.lr, warmup=o.warmup,
      init_from=t.get("init_from"))


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
  step_control = e.get("bpd_step_control", "per_sample")
  check_choice(step_control, likelihood.STEP_CONTROLS, "config.eval.bpd_step_control")
  return EvalOptions(
      begin_ckpt=e.begin_ckpt, end_ckpt=e.end_ckpt, snapshot_freq=config.training.snapshot_freq,
      checkpoint_timeout_s=e.get("checkpoint_timeout_s", 3600.0), batch_size=e.batch_size,
      enable_loss=e.enable_loss, enable_bpd=e.enable_bpd, enable_sampling=e.enable_sampling,
      num_samples=e.num_samples, bpd_dataset=e.get("bpd_dataset", "test"),
      bpd_num_repeats=e.get("bpd_num_repeats", 5), bpd_rtol=e.get("bpd_rtol", 1e-5),
      bpd_atol=e.get("bpd_atol", 1e-5), bpd_step_control=step_control,
      enable_precision_recall=e.enable_precision_recall,
      inception_batch_size=e.inception_batch_size)


def get_reference_options(config) -> ReferenceOptions:
  """Which Inception reference statistics the config's FID/KID need (checked where they are used)."""
  e = config.eval
  return ReferenceOptions(path=e.fid_stats_path, split=e.fid_stats_split,
                          num_images=e.fid_stats_num_images, batch_size=e.inception_batch_size)


# --- the autoencoder of latent diffusion ----------------------------------------------------------

def get_autoencoder_options(config):
  """config.autoencoder (and the data it trains on) as `autoencoder.AutoencoderOptions`."""
  from score_sde.experiment import autoencoder  # pylint: disable=import-outside-toplevel

  a = config.autoencoder
  check_choice(a.rec_loss, autoencoder.REC_LOSSES, "config.autoencoder.rec_loss")
  if a.perceptual_weight > 0 and not (a.lpips_vgg and a.lpips_lin):
    raise ValueError("config.autoencoder.perceptual_weight > 0 needs LPIPS from local files: set "
                     "config.autoencoder.lpips_vgg (torchvision's vgg16-397923af.pth) and "
                     "lpips_lin (lpips' weights/v0.1/vgg.pth); nothing is downloaded.")
  factor = 2 ** (len(a.ch_mult) - 1)
  if config.data.image_size % factor:
    raise ValueError(f"config.data.image_size={config.data.image_size} must be divisible by the "
                     f"autoencoder's downsampling factor {factor} (2^(len(ch_mult) - 1)).")
  widths = [a.ch * m for m in a.ch_mult]
  if any(w % a.num_groups for w in widths):
    raise ValueError(f"config.autoencoder.num_groups={a.num_groups} must divide every width "
                     f"ch * ch_mult = {widths}.")
  model = dict(ch=a.ch, out_ch=config.data.num_channels, ch_mult=tuple(a.ch_mult),
               num_res_blocks=a.num_res_blocks, attn_resolutions=tuple(a.attn_resolutions),
               z_channels=a.z_channels, embed_dim=a.embed_dim, num_groups=a.num_groups,
               dropout=a.dropout)
  disc = dict(ndf=a.disc_ndf, n_layers=a.disc_layers) if a.disc_start >= 0 else None
  spec = autoencoder.spec_from_fields(model, disc, data_spec(config), config.data.centered)
  return autoencoder.AutoencoderOptions(
      spec=spec, rec_loss=a.rec_loss, kl_weight=a.kl_weight,
      perceptual_weight=a.perceptual_weight, lpips_vgg=a.lpips_vgg, lpips_lin=a.lpips_lin,
      logvar_init=a.logvar_init, disc_start=a.disc_start, disc_weight=a.disc_weight,
      batch_size=a.batch_size, n_iters=a.n_iters, lr=a.lr, beta1=a.beta1, beta2=a.beta2,
      log_freq=a.log_freq, eval_freq=a.eval_freq, snapshot_freq=a.snapshot_freq,
      snapshot_freq_for_preemption=a.snapshot_freq_for_preemption, num_recon=a.num_recon,
      scale_num_images=a.scale_num_images)


# --- the experiment -----------------------------------------------------------------------------

def root_keys(config) -> tuple[jax.Array, ...]:
  """PRNGKey(config.seed) and the four keys split from it: (root, init, train, eval, sample)."""
  root_key = jax.random.PRNGKey(config.seed)
  return (root_key, *jax.random.split(root_key, 4))


def get_state_init(config, module=None, optimizer=None,
                   input_shape=None) -> Callable[[], training.TrainState]:
  """``init() -> TrainState`` of the config's network and optimiser, replicated over the data mesh.

  Reads only config.seed, .data (image size, channels), .model and .optim, so that a checkpoint
  converter can use it with a reference config; ``input_shape`` [H, W, C] overrides the data's
  (the latent shape of latent diffusion).
  """
  module = get_model(config) if module is None else module
  optimizer = get_optimizer(config) if optimizer is None else optimizer
  d = config.data
  shape = (1, *(input_shape or (d.image_size, d.image_size, d.num_channels)))
  with_target = objective(config) in consistency.OBJECTIVES
  sr = get_super_resolution(config)
  control = get_controlnet(config)
  control_shape = (d.image_size, d.image_size, control.channels) if control else None
  init = distributed.jit_initializer(
      lambda key: training.init_train_state(key, module, optimizer, shape, num_classes(config),
                                            with_target, sr.factor if sr else 1, control_shape),
      distributed.data_mesh())
  return functools.partial(init, root_keys(config)[1])


def check_config(config) -> None:
  """The checks across fields that no single builder sees, before any work: one line each."""
  for field in ("training.batch_size", "eval.batch_size"):
    section, name = field.split(".")
    value = config[section][name]
    if value < 1:
      raise ValueError(f"config.{field}={value} must be a positive number of images.")
  s = config.sampling
  if s.method.lower() == "pc":
    check_choice(s.predictor, predictors.PREDICTORS, "config.sampling.predictor")
    check_choice(s.corrector, correctors.CORRECTORS, "config.sampling.corrector")
  sr = config.get("super_resolution")
  if sr is not None and sr.factor > 1:
    _check_super_resolution(config)
  if is_controlnet(config):
    _check_controlnet(config)
  if objective(config) in consistency.OBJECTIVES and config.eval.enable_bpd:
    raise ValueError(f"config.training.loss={objective(config)!r} trains a consistency function, "
                     "which defines no probability-flow ODE and hence no likelihood: set "
                     "config.eval.enable_bpd=False.")
  size, size_name = config.data.image_size, f"config.data.image_size={config.data.image_size}"
  if is_latent(config):
    _check_latent(config)
    size = latent_shape(config)[0]
    size_name = f"the latent size {size} of config.latent.autoencoder_workdir"
  m = config.model
  if m.name == "dit" and size % m.patch_size:
    raise ValueError(f"{size_name} must be divisible by config.model.patch_size={m.patch_size} "
                     "(DiT patchifies its input).")
  if m.name in ("ncsnpp", "ddpm"):
    reached = [size // 2**i for i in range(len(m.ch_mult))]
    unreached = [r for r in m.attn_resolutions if r not in reached]
    if unreached:
      raise ValueError(f"config.model.attn_resolutions={tuple(m.attn_resolutions)} names "
                       f"{unreached}, which the network never reaches with {size_name} and "
                       f"ch_mult={tuple(m.ch_mult)} (it reaches {reached}); the attention blocks "
                       "would silently be dropped.")


def _check_super_resolution(config) -> None:
  s, name = config.super_resolution, config.model.name
  if name not in ("ncsnpp", "ddpm", "dit"):
    raise ValueError(f"config.super_resolution.factor={s.factor} needs a network that takes a "
                     f"low-resolution input: config.model.name 'ncsnpp', 'ddpm' or 'dit', not "
                     f"{name!r}.")
  if config.data.image_size % s.factor:
    raise ValueError(f"config.data.image_size={config.data.image_size} must be divisible by "
                     f"config.super_resolution.factor={s.factor}.")
  for field in ("aug_max", "sample_aug_level"):
    if not 0.0 <= s[field] <= 1.0:
      raise ValueError(f"config.super_resolution.{field}={s[field]} is a level s in [0, 1] "
                       "(noise of the SDE at time s T).")
  refused = {"config.latent.autoencoder_workdir": is_latent(config),
             "config.eval.enable_bpd=True": config.eval.enable_bpd,
             "config.sampling.guidance='classifier'": config.sampling.guidance == "classifier"}
  for setting, on in refused.items():
    if on:
      raise ValueError(f"{setting} is not available for a super-resolution model "
                       "(config.super_resolution.factor > 1); the likelihood would be conditional "
                       "on the low-resolution image. Turn it off.")


def _check_controlnet(config) -> None:
  from score_sde.experiment import controlnet  # pylint: disable=import-outside-toplevel
  from score_sde.models.controlnet import BACKBONES  # pylint: disable=import-outside-toplevel

  c = config.controlnet
  check_choice(c.control_type, controlnet.CONTROL_TYPES, "config.controlnet.control_type")
  if config.model.name not in BACKBONES:
    raise ValueError(f"config.controlnet needs a backbone with skip features: config.model.name one "
                     f"of {list(BACKBONES)}, not {config.model.name!r}.")
  if not 0.0 <= c.drop_prob < 1.0:
    raise ValueError(f"config.controlnet.drop_prob={c.drop_prob} is a probability in [0, 1).")
  if c.guidance_scale < 0:
    raise ValueError(f"config.controlnet.guidance_scale={c.guidance_scale} must be >= 0.")
  if config.eval.enable_bpd:
    raise ValueError("config.eval.enable_bpd=True is not available for a ControlNet model: its "
                     "likelihood would be conditional on the control image. Turn it off.")


# --- the work directory's config record (resume checks) -----------------------------------------

# Fields that define the trained network or the diffusion it learnt: a resumed run may not change
# them. Every config.model field is one, except those of the EMA, which only average the weights.
RESUME_REFUSED_FIELDS = ("model.", "training.sde", "training.continuous", "training.loss",
                         "data.image_size", "data.num_channels", "controlnet.control_type",
                         "controlnet.base_workdir", "controlnet.control_depth",
                         "controlnet.hint_channels")
RESUME_ALLOWED_MODEL_FIELDS = ("model.ema_rate", "model.ema_warmup")


def config_record(config) -> dict:
  """``config`` as plain JSON data (tuples become lists), to store with a run and compare."""
  return json.loads(config.to_json_best_effort())


def _flatten(tree: Any, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flatten(value, f"{prefix}{key}."))
  return {k.rstrip("."): v for k, v in out.items()}


_MISSING = "<missing>"


def config_changes(recorded: dict, config) -> tuple[list[str], list[str], dict]:
  """(refused, allowed, {field: (recorded value, value now)}): the dotted fields of ``config`` that
  differ from ``recorded`` (a `config_record`). Refused: `RESUME_REFUSED_FIELDS` (the model, the
  SDE, the data shape); allowed: the rest (optimiser, schedules, sampling, evaluation...) and fields
  the record lacks (added to the code after the run was recorded)."""
  old, new = _flatten(recorded), _flatten(config_record(config))
  changed = {k: (old.get(k, _MISSING), new.get(k, _MISSING)) for k in sorted(old.keys() | new.keys())
             if old.get(k, _MISSING) != new.get(k, _MISSING)}
  # A field missing from the record is newer than the run: the run had its default behaviour.
  refused = [k for k in changed if k not in RESUME_ALLOWED_MODEL_FIELDS and changed[k][0] != _MISSING
             and any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_REFUSED_FIELDS)]
  allowed = [k for k in changed if k not in refused]
  return refused, allowed, changed


def recorded_optimizer(recorded: dict, config):
  """The optimiser of ``recorded``'s config.optim (a `config_record`), or None if no optim field
  changed since (the current optimiser then restores the recorded state)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  fields = recorded.get("optim")
  if not isinstance(fields, dict) or fields == config_record(config).get("optim"):
    return None
  return _controlled_optimizer(config, _optimizer_of(ml_collections.ConfigDict(fields)))


def is_latent(config) -> bool:
  """Whether the score model is trained on an autoencoder's latents (config.latent)."""
  return bool(config.get("latent", {}).get("autoencoder_workdir"))


def latent_shape(config) -> tuple[int, int, int]:
  from score_sde.experiment import autoencoder  # pylint: disable=import-outside-toplevel

  return autoencoder.latent_shape(autoencoder.read_spec(
      os.path.join(config.latent.autoencoder_workdir, "autoencoder")))


def _check_latent(config) -> None:
  """What latent diffusion does not offer, refused before any work."""
  refused = {
      "config.eval.enable_bpd=True": config.eval.enable_bpd,
      "config.sampling.guidance='classifier'": config.sampling.guidance == "classifier",
      "config.data.dataset='pairs'": config.data.dataset.lower() == "pairs",
  }
  for setting, on in refused.items():
    if on:
      raise ValueError(f"{setting} is not available in latent diffusion "
                       "(config.latent.autoencoder_workdir is set): the probability-flow "
                       "likelihood would be of the scaled latents, not of the data, and the "
                       "classifier and reflow pairs live in image space. Turn it off.")


def get_latent_space(config):
  """The `latent.LatentSpace` of config.latent, or None in pixel space."""
  if not is_latent(config):
    return None
  from score_sde.experiment import latent  # pylint: disable=import-outside-toplevel

  d = config.data
  return latent.load_latent_space(config.latent.autoencoder_workdir, config.latent.scale_factor,
                                  image_size=d.image_size, num_channels=d.num_channels,
                                  centered=d.centered,
                                  replicated=distributed.replicated(distributed.data_mesh()))


def _encoding_loss(loss_fn: Callable, latent_space) -> Callable:
  """``loss_fn`` on the scaled latents of the image batch it is given, encoded on the fly."""
  if latent_space is None:
    return loss_fn

  def loss(params, key, images, *args, **kwargs):
    encode_key, key = jax.random.split(key)
    return loss_fn(params, key, latent_space.encode(encode_key, images), *args, **kwargs)

  return loss


def _loss(config, sde, model_fn, latent_space, sr, control, *, train: bool):
  """The configured objective, wrapped for latent diffusion, super-resolution or a ControlNet."""
  build = lambda fn: _encoding_loss(get_loss_fn(config, sde, fn, train=train), latent_space)
  if sr is not None:
    from score_sde.experiment import super_resolution  # pylint: disable=import-outside-toplevel

    build = functools.partial(super_resolution.conditioned_loss, build, sde=sde, sr=sr)
  if control is not None:
    from score_sde.experiment import controlnet  # pylint: disable=import-outside-toplevel

    return controlnet.controlled_loss(build, model_fn, control, get_data_inverse_scaler(config))
  return build(model_fn)


def build_experiment(config, *, guidance: str | None = None) -> Experiment:
  """Everything ``config`` describes, built once; ``guidance`` overrides config.sampling.guidance."""
  check_config(config)
  data = get_data_options(config)
  sde = get_sde(config)
  module = get_model(config)
  k = num_classes(config)
  dtype = compute_dtype(config)
  chunk = batch_chunk(config)
  model_fn = training.linen_model_fn(module, dtype, chunk)
  optimizer = get_optimizer(config)
  root_key, _, train_key, eval_key, sample_key = root_keys(config)
  latent_space = get_latent_space(config)
  sr = get_super_resolution(config)
  control = get_controlnet(config)
  model_shape = (latent_space.shape if latent_space is not None
                 else (data.image_size, data.image_size, data.num_channels))
  if control is not None:
    module = _controlled_module(config, module, model_shape[0])
    model_fn = training.linen_model_fn(module, dtype, chunk)
  classifier_module = get_classifier(config)
  classifier_fn = classifier_training.get_classifier_fn(classifier_module)
  guidance = get_guidance(config, guidance)
  sampler_spec = get_sampler_spec(config, guidance)
  if latent_space is not None:
    sampler_spec["latent"] = latent_space.describe()
  if sr is not None:
    sampler_spec["super_resolution"] = {"factor": sr.factor,
                                        "sample_aug_level": sr.sample_aug_level}
  if control is not None:
    sampler_spec["controlnet"] = control.describe()
  mesh = distributed.data_mesh()
  return Experiment(
      mesh=mesh, sde=sde, module=module, num_classes=k, model_fn=model_fn,
      unconditional_model_fn=training.null_class_model_fn(model_fn, k) if k else model_fn,
      network_model=get_network_model(config, sde), optimizer=optimizer,
      scaler=get_data_scaler(config), inverse_scaler=get_data_inverse_scaler(config),
      seed=config.seed, root_key=root_key, train_key=train_key, eval_key=eval_key,
      sample_key=sample_key, init_state=get_state_init(config, module, optimizer, model_shape),
      train_loss=_loss(config, sde, model_fn, latent_space, sr, control, train=True),
      eval_loss=_loss(config, sde, model_fn, latent_space, sr, control, train=False),
      guidance=guidance,
      sampler=get_sampler(config, sde, model_fn, model_shape, guidance, classifier_fn,
                          decode=latent_space.decode if latent_space is not None else None,
                          super_resolution=sr, controlnet=control, mesh=mesh),
      sampler_spec=sampler_spec,
      pc_options=sampler_options(config, SAMPLERS["pc"]),
      classifier_module=classifier_module, classifier_fn=classifier_fn,
      dataset=functools.partial(get_dataset, config), data=data,
      training=get_train_options(config), classifier=get_classifier_options(config),
      eval=get_eval_options(config), reference=get_reference_options(config),
      latent=latent_space, super_resolution=sr, controlnet=control)


def build_training_experiment(config) -> Experiment:
  """`build_experiment` for score-model training: snapshot sample grids of a classifier-guided
  config are unguided, since the classifier is trained separately, often later."""
  return build_experiment(config,
                          guidance="none" if config.sampling.guidance == "classifier" else None)
