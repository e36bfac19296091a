"""The UNet of "Denoising Diffusion Probabilistic Models" (Ho et al., NeurIPS 2020, Appendix B).

Wide-ResNet blocks with GroupNorm (32 groups), sinusoidal time embedding, self-attention at the
resolutions in `attn_resolutions`, nearest-neighbour upsampling and strided-conv downsampling.
Reference model name `ddpm`; same call convention as NCSN++ (noise_labels [B], e.g. 999·t for VP),
including the optional class conditioning (`num_classes`, `class_labels`) for classifier-free
guidance. Computes in x's dtype and takes ``remat`` as NCSN++ does (ncsnpp.py).
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import layers
from score_sde.models.ncsnpp import discrete_sigmas


class DDPM(nn.Module):
  """Ho et al.'s UNet (35.7M parameters at the CIFAR-10 settings below)."""
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  scale_by_sigma: bool = False
  centered: bool = True
  nonlinearity: str = "swish"
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  # Number of classes for class-conditional training (0: unconditional; K > 0 adds a null class K).
  num_classes: int = 0
  # Channels of the low-resolution input of a super-resolution network (0: none), as in ncsnpp.py.
  low_res_channels: int = 0
  # The trainable copy of a ControlNet, as in ncsnpp.py (``control``, ``hint_features``).
  control_copy: bool = False
  # jax.checkpoint (nn.remat) per residual and attention block: less activation memory, more compute.
  remat: bool = False

  @nn.compact
  def __call__(self, x, noise_labels, train: bool = True, class_labels=None, low_res=None,
               aug_level=None, control=None, hint_features=None):
    if x.ndim != 4 or noise_labels.shape != (x.shape[0],):
      raise ValueError(f"ddpm expects x [B, H, W, C] and noise_labels [B]; got {x.shape} and "
                       f"{noise_labels.shape}.")
    layers.check_num_classes("ddpm", self.num_classes, self.conditional)
    layers.check_class_labels("ddpm", self.num_classes, class_labels, x.shape[0])
    layers.check_low_res("ddpm", self.low_res_channels, low_res, aug_level, x.shape)
    if self.low_res_channels and not self.conditional:
      raise ValueError("ddpm: low_res_channels > 0 needs conditional=True (the augmentation level "
                       "is added to the time embedding).")
    act = layers.get_act(self.nonlinearity)
    nf, num_levels = self.nf, len(self.ch_mult)
    block = layers.block_maker(self.remat)
    res_block = functools.partial(block, layers.ResnetBlockDDPM, act=act, dropout=self.dropout)
    attn_block = functools.partial(block, layers.AttnBlock)

    if self.conditional:
      dense = functools.partial(nn.Dense, nf * 4, kernel_init=layers.default_init(), dtype=x.dtype)
      temb = layers.get_timestep_embedding(noise_labels, nf).astype(x.dtype)
      temb = dense()(temb)
      temb = dense()(act(temb))
      if self.num_classes:
        temb = temb + nn.Embed(self.num_classes + 1, nf * 4, dtype=x.dtype, name="class_embed")(
            class_labels)
      if self.low_res_channels:
        temb = temb + dense(name="aug_embed")(layers.aug_level_embedding(aug_level, nf))
    else:
      temb = None

    h = x if self.centered else 2 * x - 1.0
    if low_res is not None:
      low_res = low_res if self.centered else 2 * low_res - 1.0
      h = jnp.concatenate([h, layers.upsample_low_res(low_res, x.shape[1], x.shape[2])], axis=-1)
    hs = [layers.add_hint_features(layers.conv(h, nf), hint_features, self.control_copy, "ddpm")]
    for i_level in range(num_levels):
      for _ in range(self.num_res_blocks):
        h = res_block(out_ch=nf * self.ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block()(h)
        hs.append(h)
      if i_level != num_levels - 1:
        hs.append(layers.Downsample(with_conv=self.resamp_with_conv)(hs[-1]))

    h = hs[-1]
    h = res_block()(h, temb, train)
    h = attn_block()(h)
    h = res_block()(h, temb, train)
    if self.control_copy:
      return [*hs, h]
    hs, h = layers.add_control(hs, h, control, "ddpm")

    for i_level in reversed(range(num_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = res_block(out_ch=nf * self.ch_mult[i_level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn_block()(h)
      if i_level != 0:
        h = layers.Upsample(with_conv=self.resamp_with_conv)(h)
    assert not hs

    h = act(layers.group_norm(h.shape[-1], 32, h.dtype)(h))
    h = layers.conv(h, x.shape[-1], init_scale=0.0)
    if self.scale_by_sigma:  # for the SMLD loss with discrete level labels
      sigmas = discrete_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
      h = h / sigmas[noise_labels.astype(jnp.int32)][:, None, None, None]
    return h  # [B, H, W, C]
