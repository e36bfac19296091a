"""The edge where a ConfigDict becomes explicit library objects (SDE, model, optimiser, loss).

Nothing past this module reads ``config``; every name in a config is checked here, with an error
naming the field and the valid choices.
"""
from __future__ import annotations

from typing import Any, Iterable

from score_sde import losses, optim
from score_sde import sde as sde_lib


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


def sampling_eps(config) -> float:
  """Smallest time of sampling: 1e-5 for VE, 1e-3 for VP and sub-VP (REFERENCE.md)."""
  return 1e-5 if config.training.sde.lower() == "vesde" else 1e-3


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
  """Keyword options of ``sampling.sample_pc`` from ``config.sampling`` (reference field names)."""
  s = config.sampling
  return dict(predictor=s.predictor, corrector=s.corrector, snr=s.snr, n_steps=s.n_steps_each,
              probability_flow=s.probability_flow, denoise=s.noise_removal,
              eps=sampling_eps(config))


def _pc_sampler(config, sde, score_fn, shape, key):
  from score_sde import sampling

  return sampling.sample_pc(key, score_fn, sde, shape, **pc_options(config))


def _ode_sampler(config, sde, score_fn, shape, key):
  from score_sde import sampling

  s = config.sampling
  return sampling.sample_ode(key, score_fn, sde, shape, rtol=s.get("rtol", 1e-5),
                             atol=s.get("atol", 1e-5), method=s.get("ode_method", "tsit5"),
                             denoise=s.noise_removal, eps=sampling_eps(config))


SAMPLING_METHODS = {"pc": _pc_sampler, "ode": _ode_sampler}


def get_sampler(config, sde, model_fn, shape):
  """``sample(key, params) -> (x [shape], info)`` for ``config.sampling.method``, jitted once."""
  import jax

  from score_sde import sde as sde_module

  method = config.sampling.method.lower()
  check_choice(method, SAMPLING_METHODS, "config.sampling.method")
  build = SAMPLING_METHODS[method]
  continuous = config.training.continuous

  def sample(key, params):
    score_fn = sde_module.get_score_fn(sde, model_fn, params, continuous=continuous)
    return build(config, sde, score_fn, shape, key)

  return jax.jit(sample)
