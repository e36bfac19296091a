"""NCSN++ and DDPM++ (Song et al., ICLR 2021, Sec. 4.4 and Appendix H) as one configurable UNet.

NCSN++ (VE): BigGAN blocks with FIR resampling, residual progressive input, Fourier noise embedding,
output divided by σ. DDPM++ (VP/sub-VP): the same backbone without FIR or progressive growing and with
the sinusoidal embedding of 999·t. All options of the reference configuration are fields below.

Call: `apply({'params': p}, x, noise_labels, train=..., class_labels=None, rngs={'dropout': key})`,
x [B, H, W, C], noise_labels [B]: σ for the Fourier embedding, otherwise the time/level value fed to
the sinusoidal embedding (999t or t(N-1) for VP, the level index for discrete VE).

With `num_classes` K > 0 the network is class-conditional for classifier-free guidance (Ho &
Salimans 2022): `class_labels` int [B] in 0..K, where K is the null (unconditional) class, go through
`nn.Embed(K + 1, 4 nf)` (parameter `class_embed`) and are added to the time embedding.

The network computes in the dtype of x (float32, or bfloat16 from ``config.model.compute_dtype``;
see layers.py); the noise embedding's sin/cos are computed in float32 from the float32 labels and
then cast. ``remat`` recomputes each residual and attention block in the backward pass
(``jax.checkpoint``), with the same parameter paths.
"""
import functools
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from score_sde.models import layers

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
EMBEDDING_TYPES = ("fourier", "positional")
ATTENTION_TYPES = ("ddpm",)


def _check_choice(field: str, value: str, choices):
  if value not in choices:
    raise ValueError(f"ncsnpp: {field}={value!r} is not valid; valid choices: {list(choices)}.")


def discrete_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> jnp.ndarray:
  """Descending VE noise levels σ_i = exp(linspace(ln σ_max, ln σ_min, N)) indexed by the level label."""
  return jnp.exp(jnp.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))


class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ score network (reference model name `ncsnpp`)."""
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = True
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  attention_type: str = "ddpm"
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  init_scale: float = 0.0
  scale_by_sigma: bool = True
  centered: bool = False
  nonlinearity: str = "swish"
  conv_size: int = 3
  # Discrete VE noise table, used only to divide by σ when the labels are level indices.
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000
  # Number of classes for class-conditional training (0: unconditional; K > 0 adds a null class K).
  num_classes: int = 0
  # Channels of the low-resolution input of a super-resolution network (0: none); see __call__.
  low_res_channels: int = 0
  # The trainable copy of a ControlNet (models/controlnet.py): only the down path and middle block,
  # returning their features; see __call__.
  control_copy: bool = False
  # jax.checkpoint (nn.remat) per residual and attention block: less activation memory, more compute.
  remat: bool = False

  def validate(self):
    """Raise a ValueError naming the valid choices for any unknown or inconsistent option."""
    _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
    _check_choice("progressive", self.progressive, PROGRESSIVE)
    _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
    _check_choice("progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE)
    _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
    _check_choice("attention_type", self.attention_type, ATTENTION_TYPES)
    layers.get_act(self.nonlinearity)
    if self.conv_size < 1 or self.conv_size % 2 == 0:
      raise ValueError(f"ncsnpp: conv_size must be a positive odd integer, got {self.conv_size}.")
    if not self.ch_mult or self.num_res_blocks < 1 or self.nf < 1:
      raise ValueError("ncsnpp: need nf >= 1, num_res_blocks >= 1 and a non-empty ch_mult.")
    layers.check_num_classes("ncsnpp", self.num_classes, self.conditional)
    if self.low_res_channels and not self.conditional:
      raise ValueError("ncsnpp: low_res_channels > 0 embeds the augmentation level into the time "
                       "embedding, which conditional=False removes.")

  @nn.compact
  def __call__(self, x, noise_labels, train: bool = True, class_labels=None, low_res=None,
               aug_level=None, control=None, hint_features=None):
    """Super-resolution (``low_res_channels`` > 0, SR3 / cascaded diffusion): ``low_res`` [B, h, w,
    C'] is resized to H×W (bicubic) and concatenated to x before the first convolution, and the
    conditioning-augmentation level ``aug_level`` [B] is embedded and added to the time embedding.

    ControlNet (Zhang et al. 2023): ``control`` is a list of residuals added to the skip
    connections (in the order they are made) and, last, to the middle block's output. With
    ``control_copy`` the network is the trainable copy: ``hint_features`` [B, H, W, nf] is added to
    the first feature map and the features those residuals are made from are returned."""
    self.validate()
    layers.check_class_labels("ncsnpp", self.num_classes, class_labels, x.shape[0])
    layers.check_low_res("ncsnpp", self.low_res_channels, low_res, aug_level, x.shape)
    if x.ndim != 4 or noise_labels.shape != (x.shape[0],):
      raise ValueError(f"ncsnpp expects x [B, H, W, C] and noise_labels [B]; got {x.shape} and "
                       f"{noise_labels.shape}.")
    num_levels = len(self.ch_mult)
    if x.shape[1] % 2 ** (num_levels - 1) or x.shape[2] % 2 ** (num_levels - 1):
      raise ValueError(f"ncsnpp: image size {x.shape[1:3]} must be divisible by "
                       f"2**(len(ch_mult) - 1) = {2 ** (num_levels - 1)}.")
    act = layers.get_act(self.nonlinearity)
    nf, init_scale, skip_rescale = self.nf, self.init_scale, self.skip_rescale
    conv = functools.partial(layers.conv, kernel_size=self.conv_size)
    rescale = (lambda a: a / math.sqrt(2.0)) if skip_rescale else (lambda a: a)

    # Noise-level embedding.
    if self.embedding_type == "fourier":
      used_sigmas = noise_labels
      temb = layers.GaussianFourierProjection(nf, self.fourier_scale)(jnp.log(noise_labels))
    else:
      temb = layers.get_timestep_embedding(noise_labels, nf)
    temb = temb.astype(x.dtype)
    if self.conditional:
      dense = functools.partial(nn.Dense, nf * 4, kernel_init=layers.default_init(), dtype=x.dtype)
      temb = dense()(temb)
      temb = dense()(act(temb))
      if self.num_classes:
        temb = temb + nn.Embed(self.num_classes + 1, nf * 4, dtype=x.dtype, name="class_embed")(
            class_labels)
      if self.low_res_channels:
        temb = temb + dense(name="aug_embed")(layers.aug_level_embedding(aug_level, nf))
    else:
      temb = None

    resample = dict(fir=self.fir, fir_kernel=tuple(self.fir_kernel), conv_size=self.conv_size)
    block = layers.block_maker(self.remat)
    attn_block = functools.partial(block, layers.AttnBlockpp, init_scale=init_scale,
                                   skip_rescale=skip_rescale)
    if self.resblock_type == "ddpm":
      res_block = functools.partial(block, layers.ResnetBlockDDPMpp, act=act, dropout=self.dropout,
                                    init_scale=init_scale, skip_rescale=skip_rescale,
                                    conv_size=self.conv_size)
    else:
      res_block = functools.partial(block, layers.ResnetBlockBigGANpp, act=act, dropout=self.dropout,
                                    fir=self.fir, fir_kernel=tuple(self.fir_kernel),
                                    init_scale=init_scale, skip_rescale=skip_rescale,
                                    conv_size=self.conv_size)

    if not self.centered:  # data in [0, 1] -> [-1, 1]
      x = 2 * x - 1.0
      low_res = None if low_res is None else 2 * low_res - 1.0
    x_in = x if low_res is None else jnp.concatenate(
        [x, layers.upsample_low_res(low_res, x.shape[1], x.shape[2])], axis=-1)

    # Downsampling path.
    input_pyramid = x if self.progressive_input != "none" else None
    hs = [layers.add_hint_features(conv(x_in, nf), hint_features, self.control_copy, "ncsnpp")]
    for i_level in range(num_levels):
      for _ in range(self.num_res_blocks):
        h = res_block(out_ch=nf * self.ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block()(h)
        hs.append(h)
      if i_level != num_levels - 1:
        if self.resblock_type == "ddpm":
          h = layers.Downsample(with_conv=self.resamp_with_conv, **resample)(hs[-1])
        else:
          h = res_block(down=True)(hs[-1], temb, train)
        if self.progressive_input == "input_skip":
          input_pyramid = layers.Downsample(with_conv=False, **resample)(input_pyramid)
          h = layers.Combine(method=self.progressive_combine)(input_pyramid, h)
        elif self.progressive_input == "residual":
          input_pyramid = layers.Downsample(out_ch=h.shape[-1], with_conv=True,
                                            **resample)(input_pyramid)
          h = input_pyramid = rescale(input_pyramid + h)
        hs.append(h)

    h = hs[-1]
    h = res_block()(h, temb, train)
    h = attn_block()(h)
    h = res_block()(h, temb, train)
    if self.control_copy:
      return [*hs, h]
    hs, h = layers.add_control(hs, h, control, "ncsnpp")

    # Upsampling path.
    pyramid = None
    for i_level in reversed(range(num_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = res_block(out_ch=nf * self.ch_mult[i_level])(
            jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn_block()(h)

      if self.progressive == "output_skip":
        pyramid_h = conv(act(layers.group_norm(h.shape[-1], dtype=h.dtype)(h)), x.shape[-1],
                         init_scale=init_scale)
        if pyramid is None:
          pyramid = pyramid_h
        else:
          pyramid = layers.Upsample(with_conv=False, **resample)(pyramid) + pyramid_h
      elif self.progressive == "residual":
        if pyramid is None:
          pyramid = conv(act(layers.group_norm(h.shape[-1], dtype=h.dtype)(h)), h.shape[-1])
        else:
          pyramid = layers.Upsample(out_ch=h.shape[-1], with_conv=True, **resample)(pyramid)
          h = pyramid = rescale(pyramid + h)

      if i_level != 0:
        if self.resblock_type == "ddpm":
          h = layers.Upsample(with_conv=self.resamp_with_conv, **resample)(h)
        else:
          h = res_block(up=True)(h, temb, train)

    assert not hs
    if self.progressive == "output_skip":
      h = pyramid
    else:
      h = conv(act(layers.group_norm(h.shape[-1], dtype=h.dtype)(h)), x.shape[-1], init_scale=init_scale)

    if self.scale_by_sigma:
      if self.embedding_type == "positional":
        sigmas = discrete_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
        used_sigmas = sigmas[noise_labels.astype(jnp.int32)]
      h = h / used_sigmas[:, None, None, None]
    return h  # [B, H, W, C]
