"""Where a ConfigDict becomes the explicit arguments of models/, io/ and diffusion/.

Every config field these libraries need is read here, and a bad value raises a ValueError that
names the field (``config.model.num_classes``, ``config.data.dataset``, ...). The libraries take
keyword arguments or small frozen dataclasses and never see a config.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from score_sde import models
from score_sde.diffusion import sde as sde_lib
from score_sde.io import datasets
from score_sde.models import ncsn
from score_sde.models.classifier import NoiseConditionalWideResNet
from score_sde.models.ncsnpp import NCSNpp


def _check_choice(value: Any, choices: Iterable, field: str) -> None:
  choices = sorted(choices)
  if value not in choices:
    raise ValueError(f"Unknown {field}={value!r}; valid choices: {choices}.")


# --- SDE -----------------------------------------------------------------------------------------

def get_sde(config) -> sde_lib.SDE:
  """The SDE of ``config.training.sde`` with the noise schedule of ``config.model``."""
  name = config.training.sde.lower()
  _check_choice(name, sde_lib.SDES, "config.training.sde")
  m = config.model
  if name == "vesde":
    return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
  return sde_lib.SDES[name](beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)


# --- score networks ------------------------------------------------------------------------------

def _required(config, section: str, field: str):
  value = config[section].get(field) if section in config else None
  if value is None:
    raise ValueError(f"config.{section}.{field} is required to build model "
                     f"{config.model.name!r}.")
  return value


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
      num_scales=m.get("num_scales", 1000), num_classes=m.get("num_classes", 0))


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
  _check_choice(reference, ncsn.REFERENCES, "config.model.reference")
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


# config.model.name -> the constructor arguments of models.MODELS[name].
_MODEL_FIELDS: dict[str, Callable[[Any], dict]] = {
    "ncsnpp": _ncsnpp_fields,
    "ddpm": _ddpm_fields,
    "ncsn": _refinenet_fields,
    "ncsnv2": _refinenet_fields,
    "ncsnv2_64": _refinenet_fields,
    "ncsnv2_128": _refinenet_fields,
    "ncsnv2_256": _refinenet_fields,
}


def get_model(config):
  """The score network ``config.model.name`` of ``models.MODELS``, with ``config.model`` fields."""
  name = config.model.name
  _check_choice(name, models.MODELS, "config.model.name")
  num_classes = config.model.get("num_classes", 0)
  if num_classes and name not in models.CLASS_CONDITIONAL_MODELS:
    raise ValueError(f"config.model.num_classes={num_classes} (class-conditional training) is "
                     f"supported only by models {list(models.CLASS_CONDITIONAL_MODELS)}, not "
                     f"{name!r}; set config.model.num_classes=0.")
  if num_classes and not config.model.conditional:
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
