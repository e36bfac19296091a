"""Score networks. `get_model(config)` builds one from `config.model.name` and the model fields.

The ConfigDict stops here: every module takes explicit fields. The call convention is
`model.apply({'params': params}, x, noise_labels, train=bool, class_labels=None,
rngs={'dropout': key})` with x [B, H, W, C] and noise_labels [B]. Only `ncsnpp` and `ddpm` can be
class-conditional (`config.model.num_classes` > 0, `class_labels` int [B], see ncsnpp.py).
"""
from typing import Callable, Dict

import flax.linen as nn

from score_sde.models import ncsn
from score_sde.models.ddpm import DDPM
from score_sde.models.ncsnpp import NCSNpp


def _get(config, section: str, field: str, default=None):
  value = config[section].get(field, default) if section in config else default
  if value is None:
    raise ValueError(f"config.{section}.{field} is required to build model "
                     f"{config.model.name!r}.")
  return value


def _common_fields(config) -> dict:
  m = config.model
  return dict(
      nf=m.nf, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
      attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
      resamp_with_conv=m.resamp_with_conv, conditional=m.conditional,
      scale_by_sigma=m.scale_by_sigma, centered=_get(config, "data", "centered"),
      nonlinearity=m.get("nonlinearity", "swish"),
      sigma_min=m.get("sigma_min", 0.01), sigma_max=m.get("sigma_max", 50.0),
      num_scales=m.get("num_scales", 1000), num_classes=m.get("num_classes", 0))


def _check_normalization(config):
  norm = config.model.get("normalization", "GroupNorm")
  if norm != "GroupNorm":
    raise ValueError(f"model {config.model.name!r} uses GroupNorm; got normalization={norm!r}.")


def _ddpm(config) -> nn.Module:
  _check_normalization(config)
  return DDPM(**_common_fields(config))


def _ncsnpp(config) -> nn.Module:
  _check_normalization(config)
  m = config.model
  embedding_type = m.get("embedding_type", "fourier").lower()
  continuous = config.get("training", {}).get("continuous", True)
  if embedding_type == "fourier" and not continuous:
    raise ValueError("ncsnpp: embedding_type='fourier' takes σ labels and needs continuous "
                     "training (config.training.continuous=True); use 'positional' for discrete.")
  model = NCSNpp(
      **_common_fields(config),
      fir=m.fir, fir_kernel=tuple(m.fir_kernel), skip_rescale=m.skip_rescale,
      resblock_type=m.resblock_type.lower(), progressive=m.progressive.lower(),
      progressive_input=m.progressive_input.lower(),
      progressive_combine=m.progressive_combine.lower(),
      attention_type=m.get("attention_type", "ddpm").lower(), embedding_type=embedding_type,
      fourier_scale=m.get("fourier_scale", 16.0), init_scale=m.init_scale,
      conv_size=m.get("conv_size", 3))
  model.validate()
  return model


# Plain name -> constructor table (names as in the reference configs).
MODELS: Dict[str, Callable] = {
    "ncsnpp": _ncsnpp,
    "ddpm": _ddpm,
    "ncsn": ncsn.ncsn_from_config,
    "ncsnv2": ncsn.ncsnv2_from_config,
    "ncsnv2_64": ncsn.ncsnv2_64_from_config,
    "ncsnv2_128": ncsn.ncsnv2_128_from_config,
    "ncsnv2_256": ncsn.ncsnv2_256_from_config,
}


CLASS_CONDITIONAL_MODELS = ("ncsnpp", "ddpm")


def get_model(config) -> nn.Module:
  """Build the score network named by `config.model.name` from `config.model.*` and `config.data`."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"Unknown model name {name!r}; valid choices: {sorted(MODELS)}.")
  if config.model.get("num_classes", 0) and name not in CLASS_CONDITIONAL_MODELS:
    raise ValueError(f"config.model.num_classes={config.model.num_classes} (class-conditional "
                     f"training) is supported only by models {list(CLASS_CONDITIONAL_MODELS)}, "
                     f"not {name!r}; set config.model.num_classes=0.")
  return MODELS[name](config)
