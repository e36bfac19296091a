"""The KL autoencoder of latent diffusion (Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022, Sec. 3.1 and App. G): CompVis' `AutoencoderKL`, the first stage of
Stable Diffusion.

Encoder: conv_in; per resolution level `num_res_blocks` ResNet blocks of width ch·ch_mult[i] (self-
attention after each where the feature map's side is in `attn_resolutions`) and a stride-2
convolution on an asymmetric (0, 1) zero padding except after the last level; a middle block
(ResNet, attention, ResNet); GroupNorm, SiLU and a 3×3 conv to 2·z_channels. `quant_conv` (1×1) maps
it to the mean and log-variance of a diagonal Gaussian posterior over `embed_dim` latent channels.
Decoder: `post_quant_conv` (1×1), conv_in, the middle block, per level from the coarsest
`num_res_blocks + 1` ResNet blocks (and attention) and a nearest ×2 upsampling + 3×3 conv except at
the finest level, GroupNorm, SiLU, conv_out. GroupNorm has `num_groups` groups and eps 1e-6.

A f-times downsampling autoencoder (f = 2^(len(ch_mult) - 1)) maps [B, H, W, C] in [-1, 1] to
latents [B, H/f, W/f, embed_dim]. Submodule names follow LDM's state-dict keys (`encoder.down.0.
block.1` is `encoder/down_0_block_1`), so `io/convert.py` maps both LDM and diffusers files onto it.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models.conv import Conv

_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)  # LDM's DiagonalGaussianDistribution clamps the log-variance


def _conv(features: int, kernel: int, name: str, stride: int = 1, padding="SAME"):
  return Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, name=name)


class ResnetBlock(nn.Module):
  """GroupNorm → SiLU → conv3×3 → GroupNorm → SiLU → dropout → conv3×3, plus the input (through a
  1×1 `nin_shortcut` when the width changes)."""
  out_ch: int
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.silu(nn.GroupNorm(self.num_groups, epsilon=_EPS, name="norm1")(x))
    h = _conv(self.out_ch, 3, "conv1")(h)
    h = nn.silu(nn.GroupNorm(self.num_groups, epsilon=_EPS, name="norm2")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(self.out_ch, 3, "conv2")(h)
    if x.shape[-1] != self.out_ch:
      x = _conv(self.out_ch, 1, "nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H·W positions with 1×1 q, k, v and output projections."""
  num_groups: int = 32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = nn.GroupNorm(self.num_groups, epsilon=_EPS, name="norm")(x)
    q, k, v = (_conv(c, 1, n)(y).reshape(b, h * w, 1, c) for n in ("q", "k", "v"))
    y = jax.nn.dot_product_attention(q, k, v).reshape(b, h, w, c)
    return x + _conv(c, 1, "proj_out")(y)


def _downsample(x, name: str):
  """Stride-2 3×3 convolution after zero padding of one row/column at the bottom/right (LDM)."""
  x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  return _conv(x.shape[-1], 3, name, stride=2, padding="VALID")(x)


def _upsample(x, name: str):
  """Nearest-neighbour ×2, then a 3×3 convolution."""
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return _conv(x.shape[-1], 3, name)(x)


class Encoder(nn.Module):
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  z_channels: int
  double_z: bool = True
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    block = lambda ch, name: ResnetBlock(ch, self.num_groups, self.dropout, name=name)
    h = _conv(self.ch, 3, "conv_in")(x)
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = block(self.ch * mult, f"down_{i}_block_{j}")(h, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_groups, name=f"down_{i}_attn_{j}")(h)
      if i != len(self.ch_mult) - 1:
        h = _downsample(h, f"down_{i}_downsample")
    h = block(h.shape[-1], "mid_block_1")(h, train)
    h = AttnBlock(self.num_groups, name="mid_attn_1")(h)
    h = block(h.shape[-1], "mid_block_2")(h, train)
    h = nn.silu(nn.GroupNorm(self.num_groups, epsilon=_EPS, name="norm_out")(h))
    return _conv(2 * self.z_channels if self.double_z else self.z_channels, 3, "conv_out")(h)


class Decoder(nn.Module):
  ch: int
  out_ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  num_groups: int = 32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, z, train: bool = False):
    block = lambda ch, name: ResnetBlock(ch, self.num_groups, self.dropout, name=name)
    h = _conv(self.ch * self.ch_mult[-1], 3, "conv_in")(z)
    h = block(h.shape[-1], "mid_block_1")(h, train)
    h = AttnBlock(self.num_groups, name="mid_attn_1")(h)
    h = block(h.shape[-1], "mid_block_2")(h, train)
    for i in reversed(range(len(self.ch_mult))):
      for j in range(self.num_res_blocks + 1):
        h = block(self.ch * self.ch_mult[i], f"up_{i}_block_{j}")(h, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.num_groups, name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = _upsample(h, f"up_{i}_upsample")
    h = nn.silu(nn.GroupNorm(self.num_groups, epsilon=_EPS, name="norm_out")(h))
    return _conv(self.out_ch, 3, "conv_out")(h)


class AutoencoderKL(nn.Module):
  """`encode(x) -> (mean, logvar)` [B, H/f, W/f, embed_dim] each; `decode(z) -> x̂` [B, H, W, out_ch];
  `__call__(x, key)` reconstructs from a posterior sample (the mode when `sample_posterior=False`)
  and returns (x̂, mean, logvar). `attn_resolutions` are feature-map sides (LDM's `curr_res`)."""
  ch: int = 128
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = ()
  z_channels: int = 4
  embed_dim: int = 4
  num_groups: int = 32
  dropout: float = 0.0

  def setup(self):
    self.encoder = Encoder(self.ch, self.ch_mult, self.num_res_blocks, self.attn_resolutions,
                           self.z_channels, num_groups=self.num_groups, dropout=self.dropout)
    self.decoder = Decoder(self.ch, self.out_ch, self.ch_mult, self.num_res_blocks,
                           self.attn_resolutions, self.num_groups, self.dropout)
    self.quant_conv = _conv(2 * self.embed_dim, 1, "quant_conv")
    self.post_quant_conv = _conv(self.z_channels, 1, "post_quant_conv")

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  def encode(self, x, train: bool = False):
    moments = self.quant_conv(self.encoder(x, train))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z, train: bool = False):
    return self.decoder(self.post_quant_conv(z), train)

  def __call__(self, x, key=None, train: bool = False, sample_posterior: bool = True):
    mean, logvar = self.encode(x, train)
    z = posterior_sample(key, mean, logvar) if sample_posterior else mean
    return self.decode(z, train), mean, logvar


def posterior_sample(key, mean, logvar):
  """z = μ + exp(½ log σ²) ε, ε ~ N(0, I): a draw from the diagonal Gaussian posterior q(z | x)."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def kl_to_standard_normal(mean, logvar):
  """KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²), summed over all but the batch axis
  (LDM's `DiagonalGaussianDistribution.kl`), [B]."""
  terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
  return 0.5 * jnp.sum(terms, axis=tuple(range(1, mean.ndim)))
