"""Super-resolution score models: SR3 (Saharia et al. 2021) and the stages of cascaded diffusion
(Ho et al. 2022), on every SDE, objective and sampler.

A super-resolution network (`low_res_channels` > 0 in models/ncsnpp.py, ddpm.py, dit.py) takes the
low-resolution image, upsampled and concatenated to its input, and the level s of the conditioning
augmentation. `SuperResolution` holds what the experiment adds around it:
* training: the low-resolution image is the f×f average pooling of the batch, noised by the
  conditioning augmentation of CDM (Sec. 4.1): the forward process of the run's own SDE at time
  s·T, x_lr ← m(sT) x_lr + std(sT) z with s ~ U[0, aug_max] per image (s = 0: no noise), and the
  network sees s;
* sampling: the same with the fixed level ``sample_aug_level`` (CDM's chosen s, a config field and a
  study of docs/image_conditioning.md).
`builders` wraps the configured objective and sampler with it (`conditioned_loss`,
`conditioned_model_fn`), so every objective and sampler takes a super-resolution network unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SuperResolution:
  factor: int  # output side / low-resolution side
  aug_max: float  # training: s ~ U[0, aug_max]
  sample_aug_level: float  # sampling: s

  def downsample(self, images):
    """f×f average pooling [B, H, W, C] -> [B, H/f, W/f, C]: the low-resolution image."""
    b, h, w, c = images.shape
    f = self.factor
    return images.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))

  @staticmethod
  def augment(key, sde, low_res, level):
    """x_lr at augmentation level s [B] in [0, 1]: m(sT) x_lr + std(sT) z, and x_lr itself at s = 0."""
    m, std = sde.marginal_params(level * sde.T)
    z = jax.random.normal(key, low_res.shape, low_res.dtype)
    noised = m[:, None, None, None] * low_res + std[:, None, None, None] * z
    return jnp.where((level > 0)[:, None, None, None], noised, low_res)

  def training_condition(self, key, sde, images):
    """(augmented low-resolution image, s) of a training batch of full-resolution ``images``."""
    level_key, noise_key = jax.random.split(key)
    level = jax.random.uniform(level_key, images.shape[:1], images.dtype, 0.0, self.aug_max)
    return self.augment(noise_key, sde, self.downsample(images), level), level

  def sampling_condition(self, key, sde, low_res):
    """(augmented low-resolution input, s) at the fixed sampling level."""
    level = jnp.full(low_res.shape[:1], self.sample_aug_level, low_res.dtype)
    return self.augment(key, sde, low_res, level), level


def conditioned_model_fn(model_fn: Callable, low_res, aug_level) -> Callable:
  """``model_fn`` with the low-resolution input bound: a model_fn of the common signature."""
  return lambda params, x, labels, **kwargs: model_fn(params, x, labels, low_res=low_res,
                                                      aug_level=aug_level, **kwargs)


def conditioned_loss(build_loss: Callable[[Callable], Callable], model_fn: Callable, sde,
                     sr: SuperResolution) -> Callable:
  """The objective ``build_loss(model_fn)`` of a super-resolution network: each batch's images
  give the (augmented) low-resolution input, drawn with the first half of the loss's key."""

  def loss(params, key, images, *args, **kwargs):
    condition_key, key = jax.random.split(key)
    low_res, level = sr.training_condition(condition_key, sde, images)
    return build_loss(conditioned_model_fn(model_fn, low_res, level))(params, key, images, *args,
                                                                      **kwargs)

  return loss
