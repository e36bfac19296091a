"""Building blocks shared by the DDPM (Ho et al., 2020) and NCSN++/DDPM++ (Song et al., 2021) UNets.

All images are NHWC. Submodule and parameter names (`Conv_0`, `GroupNorm_1`, `NIN_0/W`, `Conv2d_0/weight`,
...) follow the reference implementation's Flax tree, so its checkpoints load without renaming.

Initialisation (reference): variance scaling, fan_avg, uniform, with a per-layer scale where a scale of 0
means 1e-10 (the last convolution of each residual branch starts near zero); NIN layers default to 0.1.

Compute dtype: every layer computes in the dtype of its input (float32, or bfloat16 when
``config.model.compute_dtype='bfloat16'`` casts the network's input), casting its float32 parameters
at use (flax's ``dtype``); GroupNorm statistics and the attention softmax stay in float32.
"""
import collections
import inspect
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import up_or_down_sampling as fir_ops
from score_sde.models.conv import Conv, conv_general_dilated

ACTIVATIONS = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
    "swish": nn.swish,
}


def get_act(name: str) -> Callable:
  """Nonlinearity by name; one of ACTIVATIONS."""
  try:
    return ACTIVATIONS[name.lower()]
  except KeyError:
    raise ValueError(f"Unknown nonlinearity {name!r}; valid choices: {sorted(ACTIVATIONS)}.") from None


def default_init(scale: float = 1.0):
  """DDPM initialiser: variance scaling (fan_avg, uniform); scale 0 means 1e-10."""
  return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def group_norm(channels: int, num_groups: Optional[int] = None, dtype=None) -> nn.GroupNorm:
  """GroupNorm with `num_groups` groups, default min(C // 4, 32) as in NCSN++; epsilon 1e-6.
  ``dtype``: its output dtype (pass the input's); the statistics are float32 (flax's
  ``force_float32_reductions``)."""
  groups = min(channels // 4, 32) if num_groups is None else num_groups
  if groups < 1 or channels % groups:
    raise ValueError(f"GroupNorm: {channels} channels cannot be split into {groups} groups; "
                     "use a channel count divisible by the group count (and >= 4).")
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype)


def conv(x, features: int, kernel_size: int = 3, stride: int = 1, init_scale: float = 1.0,
         use_bias: bool = True):
  """DDPM-initialised square convolution with SAME padding, in x's dtype; call inside a compact
  method."""
  return Conv(features, (kernel_size, kernel_size), strides=(stride, stride), padding="SAME",
              use_bias=use_bias, kernel_init=default_init(init_scale),
              bias_init=nn.initializers.zeros, dtype=x.dtype)(x)


def block_maker(remat: bool) -> Callable:
  """``make(cls, **fields)``: a block of class ``cls`` named ``{cls.__name__}_{i}`` (the i-th such
  block), the name flax gives it unnamed, and with ``remat`` wrapped in ``nn.remat``
  (``jax.checkpoint``: its activations are recomputed in the backward pass instead of stored).
  The explicit name keeps the parameter paths of checkpoints and weight converters: flax would
  name the lifted class ``Checkpoint{cls.__name__}``. A ``train`` argument is static."""
  counts = collections.Counter()

  def make(cls, **fields):
    name = f"{cls.__name__}_{counts[cls.__name__]}"
    counts[cls.__name__] += 1
    if remat:
      args = list(inspect.signature(cls.__call__).parameters)  # self counts in static_argnums
      cls = nn.remat(cls, static_argnums=(args.index("train"),) if "train" in args else ())
    return cls(name=name, **fields)

  return make


def get_timestep_embedding(timesteps, embedding_dim: int, max_positions: int = 10000):
  """Sinusoidal embedding (Vaswani et al., 2017) as in DDPM: [sin(t w_i), cos(t w_i)], [B, D]."""
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must have shape [B], got {timesteps.shape}.")
  half = embedding_dim // 2
  freqs = jnp.exp(-math.log(max_positions) / (half - 1) * jnp.arange(half, dtype=jnp.float32))
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if embedding_dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def check_low_res(model: str, low_res_channels: int, low_res, aug_level, x_shape) -> None:
  """A super-resolution network (``low_res_channels`` C' > 0) takes ``low_res`` [B, h, w, C'] with
  h and w dividing the output's H and W, and ``aug_level`` [B]; any other network takes neither."""
  if not low_res_channels:
    if low_res is not None or aug_level is not None:
      raise ValueError(f"{model} takes no low-resolution input (low_res_channels=0); build it with "
                       "low_res_channels > 0 for super-resolution.")
    return
  b, h, w = x_shape[:3]
  if low_res is None or aug_level is None:
    raise ValueError(f"{model} is a super-resolution network (low_res_channels="
                     f"{low_res_channels}): pass low_res [B, h, w, {low_res_channels}] and "
                     "aug_level [B] (0 without conditioning augmentation).")
  if (low_res.ndim != 4 or low_res.shape[0] != b or low_res.shape[-1] != low_res_channels
      or h % low_res.shape[1] or w % low_res.shape[2]):
    raise ValueError(f"{model}: low_res must be [B={b}, h, w, {low_res_channels}] with h, w "
                     f"dividing {h}x{w}; got {tuple(low_res.shape)}.")
  if aug_level.shape != (b,):
    raise ValueError(f"{model}: aug_level must be [B]=({b},); got {tuple(aug_level.shape)}.")


def add_hint_features(features, hint_features, control_copy: bool, model: str):
  """The first feature map of a network, plus the hint encoder's output in a ControlNet copy."""
  if not control_copy:
    if hint_features is not None:
      raise ValueError(f"{model}: hint_features is the input of a ControlNet copy; build the "
                       "network with control_copy=True.")
    return features
  if hint_features is None or hint_features.shape != features.shape:
    raise ValueError(f"{model}: a ControlNet copy takes hint_features of the first feature map's "
                     f"shape {tuple(features.shape)}; got "
                     f"{None if hint_features is None else tuple(hint_features.shape)}.")
  return features + hint_features


def add_control(skips, middle, control, model: str):
  """(skips, middle) with a ControlNet's residuals added: one per skip connection, in the order the
  skips were made, then one for the middle block's output (Zhang et al. 2023, Fig. 3)."""
  if control is None:
    return skips, middle
  shapes = [tuple(a.shape) for a in (*skips, middle)]
  if len(control) != len(shapes) or any(tuple(r.shape) != s for r, s in zip(control, shapes)):
    raise ValueError(f"{model}: control must be {len(shapes)} residuals of shapes {shapes} (the "
                     f"skips, then the middle block); got {[tuple(r.shape) for r in control]}.")
  return [s + r for s, r in zip(skips, control)], middle + control[-1]


def upsample_low_res(low_res, height: int, width: int):
  """The low-resolution input resized to the output's size by bicubic interpolation (SR3, CDM),
  to be concatenated to the network's input channels."""
  b, _, _, c = low_res.shape
  return jax.image.resize(low_res, (b, height, width, c), method="bicubic")


def aug_level_embedding(aug_level, dim: int):
  """The conditioning-augmentation level s in [0, 1] (CDM, Ho et al. 2022, Sec. 4.1) as a
  sinusoidal embedding of 999 s, the time embedding's scale; its Dense is added to the time
  embedding."""
  return get_timestep_embedding(999.0 * aug_level, dim)


def check_num_classes(model: str, num_classes: int, conditional: bool) -> None:
  """Class conditioning is added to the time embedding, so it needs ``conditional=True``."""
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 0:
    raise ValueError(f"{model}: num_classes must be an integer >= 0 (0 = unconditional), got "
                     f"{num_classes!r}.")
  if num_classes and not conditional:
    raise ValueError(f"{model}: num_classes={num_classes} adds a class embedding to the time "
                     "embedding, which conditional=False removes; set conditional=True or "
                     "num_classes=0.")


def check_class_labels(model: str, num_classes: int, class_labels, batch_size: int) -> None:
  """``class_labels`` int [B] in 0..K (K = null class) iff the network has K = num_classes > 0."""
  if num_classes and class_labels is None:
    raise ValueError(f"{model} is class-conditional (num_classes={num_classes}): pass "
                     f"class_labels int [B] with values in 0..{num_classes}, where {num_classes} "
                     "is the null (unconditional) class.")
  if not num_classes and class_labels is not None:
    raise ValueError(f"{model} is unconditional (num_classes=0) but got class_labels; drop them "
                     "or build the network with num_classes > 0.")
  if class_labels is not None and (class_labels.shape != (batch_size,) or
                                   not jnp.issubdtype(class_labels.dtype, jnp.integer)):
    raise ValueError(f"{model}: class_labels must be integers of shape [B]=({batch_size},), got "
                     f"{class_labels.dtype} {class_labels.shape}.")


class GaussianFourierProjection(nn.Module):
  """Random Fourier features [sin 2πxW, cos 2πxW] with frozen W ~ N(0, scale²) (Tancik et al., 2020).

  Always float32: the arguments reach hundreds of radians, which bfloat16 would round by whole
  radians."""
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x):  # x: [B]
    w = jax.lax.stop_gradient(
        self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,)))
    proj = x.astype(jnp.float32)[:, None] * w[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)  # [B, 2E]


class NIN(nn.Module):
  """Per-pixel dense layer ("network in network"), W [C_in, C_out], in x's dtype."""
  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x):
    w = self.param("W", default_init(self.init_scale), (x.shape[-1], self.num_units))
    b = self.param("b", nn.initializers.zeros, (self.num_units,))
    return jnp.tensordot(x, w.astype(x.dtype), axes=1) + b.astype(x.dtype)


class Conv2d(nn.Module):
  """Convolution with optional fused FIR up/down-sampling (StyleGAN2), in x's dtype; params
  `weight` [K,K,I,O], `bias`."""
  features: int
  kernel_size: int = 3
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[int] = (1, 3, 3, 1)
  use_bias: bool = True
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x):
    if self.up and self.down:
      raise ValueError("Conv2d: up and down are mutually exclusive.")
    w = self.param("weight", default_init(self.init_scale),
                   (self.kernel_size, self.kernel_size, x.shape[-1], self.features))
    w = w.astype(x.dtype)
    if self.up:
      x = fir_ops.upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = fir_ops.conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = conv_general_dilated(x, w, (1, 1), "SAME",
                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      x = x + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return x


class Combine(nn.Module):
  """Merge a progressive-input pyramid level x into features y: 1x1 conv, then sum or concat."""
  method: str = "cat"

  @nn.compact
  def __call__(self, x, y):
    h = conv(x, y.shape[-1], kernel_size=1)
    if self.method == "cat":
      return jnp.concatenate([h, y], axis=-1)
    if self.method == "sum":
      return h + y
    raise ValueError(f"progressive_combine {self.method!r} unknown; valid choices: ['cat', 'sum'].")


class AttnBlockpp(nn.Module):
  """Single-head self-attention over all pixels (DDPM), residual, optionally rescaled by 1/√2; the
  softmax in float32."""
  skip_rescale: bool = False
  init_scale: float = 0.0
  norm_groups: Optional[int] = None

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    h = group_norm(c, self.norm_groups, x.dtype)(x)
    q = NIN(c)(h)
    k = NIN(c)(h)
    v = NIN(c)(h)
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k).reshape(b, height, width, -1) * c ** -0.5
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    attn = attn.reshape(b, height, width, height, width)
    h = jnp.einsum("bhwHW,bHWc->bhwc", attn, v)
    h = NIN(c, init_scale=self.init_scale)(h)
    return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(AttnBlockpp):
  """DDPM's attention block: 32 groups, zero-initialised output, no rescaling."""
  norm_groups: Optional[int] = 32


class Upsample(nn.Module):
  """2x upsampling: nearest (+3x3 conv) or FIR (+fused conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  conv_size: int = 3

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      h = fir_ops.naive_upsample_2d(x, 2)
      return conv(h, out_ch, self.conv_size) if self.with_conv else h
    if self.with_conv:
      return Conv2d(out_ch, self.conv_size, up=True, resample_kernel=self.fir_kernel)(x)
    return fir_ops.upsample_2d(x, self.fir_kernel, factor=2)


class Downsample(nn.Module):
  """2x downsampling: stride-2 3x3 conv or 2x2 average pool; or FIR (+fused conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  conv_size: int = 3

  @nn.compact
  def __call__(self, x):
    out_ch = self.out_ch or x.shape[-1]
    if not self.fir:
      # SAME padding of a stride-2 conv pads (0, 1), as the reference does.
      return conv(x, out_ch, self.conv_size, stride=2) if self.with_conv else (
          fir_ops.naive_downsample_2d(x, 2))
    if self.with_conv:
      return Conv2d(out_ch, self.conv_size, down=True, resample_kernel=self.fir_kernel)(x)
    return fir_ops.downsample_2d(x, self.fir_kernel, factor=2)


class ResnetBlockDDPMpp(nn.Module):
  """DDPM residual block: GN-act-conv, + Dense(temb), GN-act-dropout-conv; NIN/conv shortcut."""
  act: Callable
  out_ch: Optional[int] = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0
  conv_size: int = 3
  norm_groups: Optional[int] = None

  @nn.compact
  def __call__(self, x, temb=None, train: bool = True):
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = self.act(group_norm(c, self.norm_groups, x.dtype)(x))
    h = conv(h, out_ch, self.conv_size)
    if temb is not None:
      h += nn.Dense(out_ch, kernel_init=default_init(), dtype=x.dtype)(
          self.act(temb))[:, None, None, :]
    h = self.act(group_norm(out_ch, self.norm_groups, x.dtype)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv(h, out_ch, self.conv_size, init_scale=self.init_scale)
    if c != out_ch:
      x = conv(x, out_ch, self.conv_size) if self.conv_shortcut else NIN(out_ch)(x)
    return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockDDPM(ResnetBlockDDPMpp):
  """The residual block of Ho et al.'s UNet: 32 GroupNorm groups, no rescaling."""
  norm_groups: Optional[int] = 32


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN residual block with optional 2x up/down-sampling of both branches (FIR or naive)."""
  act: Callable
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  conv_size: int = 3

  @nn.compact
  def __call__(self, x, temb=None, train: bool = True):
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = self.act(group_norm(c, dtype=x.dtype)(x))
    if self.up:
      resample = ((lambda a: fir_ops.upsample_2d(a, self.fir_kernel, factor=2)) if self.fir
                  else (lambda a: fir_ops.naive_upsample_2d(a, 2)))
    elif self.down:
      resample = ((lambda a: fir_ops.downsample_2d(a, self.fir_kernel, factor=2)) if self.fir
                  else (lambda a: fir_ops.naive_downsample_2d(a, 2)))
    if self.up or self.down:
      h, x = resample(h), resample(x)
    h = conv(h, out_ch, self.conv_size)
    if temb is not None:
      h += nn.Dense(out_ch, kernel_init=default_init(), dtype=x.dtype)(
          self.act(temb))[:, None, None, :]
    h = self.act(group_norm(out_ch, dtype=x.dtype)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv(h, out_ch, self.conv_size, init_scale=self.init_scale)
    if c != out_ch or self.up or self.down:
      x = conv(x, out_ch, kernel_size=1)
    return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h
