"""NCSN and NCSNv2: dilated RefineNet score networks for discrete VE noise levels.

- NCSN: Song & Ermon, "Generative Modeling by Estimating Gradients of the Data
  Distribution", NeurIPS 2019 (conditional instance norm++ on the noise-level index).
- NCSNv2: Song & Ermon, "Improved Techniques for Training Score-Based Generative
  Models", NeurIPS 2020 (unconditional network whose output is divided by sigma,
  Technique 3).
- RefineNet blocks (RCU, multi-resolution fusion, chained residual pooling): Lin et al.,
  "RefineNet", CVPR 2017.

Call convention: ``model.apply({'params': p}, x, noise_labels, train=...)`` with ``x``
NHWC and ``noise_labels`` [B] integer indices into the DESCENDING table
``sigmas = exp(linspace(ln sigma_max, ln sigma_min, num_scales))``; index 0 is the
largest noise level. Neither network has dropout or batch statistics, so ``train``
changes nothing and no rngs are needed.

Two public reference implementations exist and they differ slightly; ``reference``
selects which one is reproduced exactly:

- ``'jax'`` (yang-song/score_sde): in the 32/64 px network and in NCSN the third
  RefineBlock is 2*nf wide; bilinear resizing uses half-pixel centres
  (``jax.image.resize``); the across-channel variance in instance norm++ is biased.
- ``'pytorch'`` (yang-song/score_sde_pytorch, ermongroup/ncsn(v2)): that block is nf
  wide; bilinear resizing uses ``align_corners=True``; the across-channel variance is
  unbiased (``torch.var``).

The 128 px and 256 px networks are identical in both.
"""
import dataclasses
import functools
from typing import Any, Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models.conv import Conv

ACTIVATIONS = {
    'elu': nn.elu,
    'relu': nn.relu,
    'lrelu': functools.partial(nn.leaky_relu, negative_slope=0.2),
    'swish': nn.swish,
}
NORMALIZATIONS = ('InstanceNorm++', 'InstanceNorm', 'VarianceNorm', 'GroupNorm')
INTERPOLATIONS = ('bilinear', 'nearest_neighbor')
REFERENCES = ('jax', 'pytorch')
_EPS = 1e-5

# Backbone stages as (width multiple of nf, dilation). Every stage after the first
# opens with a 'down' block: a 2x mean-pool when its dilation is 1, otherwise a
# dilated convolution that keeps the resolution (the dilated RefineNet of NCSN).
_STAGES_32_64 = ((1, 1), (2, 1), (2, 2), (2, 4))
_STAGES_128 = ((1, 1), (2, 1), (2, 1), (4, 2), (4, 4))
_STAGES_256 = ((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4))
# RefineBlock widths (multiples of nf), deepest first, per reference implementation.
_REFINE_32_64 = {'jax': (2, 2, 2, 1), 'pytorch': (2, 2, 1, 1)}
_REFINE_128 = (4, 2, 2, 1, 1)
_REFINE_256 = (4, 2, 2, 2, 1, 1)


def descending_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> jnp.ndarray:
  """Noise levels sigma_i = exp(linspace(ln sigma_max, ln sigma_min, N)), largest first."""
  return jnp.exp(jnp.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))


# ----------------------------------------------------------------------------------
# Normalisations (NCSN paper, appendix A: instance norm++)
# ----------------------------------------------------------------------------------

def instance_norm_plus(x, gamma, alpha, beta, ddof: int = 0):
  """Instance norm++: gamma * ((x - mu) / s + alpha * (mu - m) / v) + beta.

  mu, s: per-sample per-channel spatial mean and std of x [B, H, W, C];
  m, v: mean and std of mu across channels (v with ``ddof``). gamma, alpha, beta
  broadcast against [B, C].
  """
  mu = jnp.mean(x, axis=(1, 2))  # [B, C]
  m = jnp.mean(mu, axis=-1, keepdims=True)  # [B, 1]
  v2 = jnp.var(mu, axis=-1, keepdims=True, ddof=ddof)  # [B, 1]
  mu_plus = (mu - m) / jnp.sqrt(v2 + _EPS)  # [B, C]
  s2 = jnp.var(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
  h = (x - mu[:, None, None, :]) / jnp.sqrt(s2 + _EPS)
  h = h + (alpha * mu_plus)[:, None, None, :]
  return gamma[:, None, None, :] * h + beta[:, None, None, :]


def _near_one(key, shape, dtype=jnp.float32):
  """N(1, 0.02^2): the reference initialisation of instance norm++ scales."""
  return 1. + 0.02 * jax.random.normal(key, shape, dtype)


class InstanceNormPlus(nn.Module):
  """Instance norm++ with learned per-channel gamma, alpha, beta (NCSNv2)."""
  ddof: int = 0

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    alpha = self.param('alpha', _near_one, (c,))
    gamma = self.param('gamma', _near_one, (c,))
    beta = self.param('beta', nn.initializers.zeros, (c,))
    ones = jnp.ones((x.shape[0], 1), x.dtype)
    return instance_norm_plus(x, gamma * ones, alpha * ones, beta * ones, self.ddof)


class ConditionalInstanceNormPlus(nn.Module):
  """Conditional instance norm++ (NCSN): gamma, alpha, beta looked up per noise level.

  The table ``embedding`` [num_classes, 3C] holds [gamma | alpha | beta]; gamma and
  alpha start at N(1, 0.02^2), beta at 0.
  """
  num_classes: int
  ddof: int = 0

  @nn.compact
  def __call__(self, x, y):
    c = x.shape[-1]

    def init(key, shape, dtype=jnp.float32):
      scales = _near_one(key, (shape[0], 2 * c), dtype)
      return jnp.concatenate([scales, jnp.zeros((shape[0], c), dtype)], axis=-1)

    table = self.param('embedding', init, (self.num_classes, 3 * c))
    gamma, alpha, beta = jnp.split(table[y], 3, axis=-1)  # each [B, C]
    return instance_norm_plus(x, gamma, alpha, beta, self.ddof)


class InstanceNorm(nn.Module):
  """Plain instance norm with per-channel scale and bias (JAX reference layout)."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    mu = jnp.mean(x, axis=(1, 2), keepdims=True)
    s2 = jnp.var(x, axis=(1, 2), keepdims=True)
    h = (x - mu) / jnp.sqrt(s2 + _EPS)
    return h * self.param('scale', nn.initializers.ones, (c,)) + self.param(
        'bias', nn.initializers.zeros, (c,))


class VarianceNorm(nn.Module):
  """Divide by the per-channel spatial std, then a learned scale (no centring)."""

  @nn.compact
  def __call__(self, x):
    s2 = jnp.var(x, axis=(1, 2), keepdims=True)
    return x / jnp.sqrt(s2 + _EPS) * self.param('scale', _near_one, (x.shape[-1],))


@dataclasses.dataclass(frozen=True)
class _NormSpec:
  """Which normalisation every block uses; conditional means NCSN (v1)."""
  name: str
  conditional: bool
  num_classes: int
  ddof: int

  def __call__(self, x, y):
    """Create the normalisation in the calling module's scope and apply it."""
    if self.conditional:
      return ConditionalInstanceNormPlus(self.num_classes, self.ddof)(x, y)
    if self.name == 'InstanceNorm++':
      return InstanceNormPlus(self.ddof)(x)
    if self.name == 'InstanceNorm':
      return InstanceNorm()(x)
    if self.name == 'VarianceNorm':
      return VarianceNorm()(x)
    return nn.GroupNorm()(x)


# ----------------------------------------------------------------------------------
# Convolutions and resampling
# ----------------------------------------------------------------------------------

def _conv(x, features, kernel=3, dilation=1, use_bias=True):
  """Convolution with PyTorch's default init, U(+-1/sqrt(fan_in)) for kernel and bias."""
  bound = 1. / np.sqrt(kernel * kernel * x.shape[-1])

  def uniform(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return Conv(features, (kernel, kernel), padding='SAME',
              kernel_dilation=(dilation, dilation), use_bias=use_bias,
              kernel_init=uniform, bias_init=uniform)(x)


def _mean_pool2(x):
  """Average of the four 2x2 phases: [B, H, W, C] -> [B, H/2, W/2, C]."""
  return (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4.


def _resize_align_corners(x, hw):
  """Bilinear resize with align_corners=True (PyTorch reference), x [B, H, W, C]."""
  for axis, n_out in zip((1, 2), hw):
    n_in = x.shape[axis]
    if n_in == n_out:
      continue
    pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
    lo = np.floor(pos).astype(np.int32)
    hi = np.minimum(lo + 1, n_in - 1)
    w = jnp.asarray(pos - lo, x.dtype).reshape([n_out if a == axis else 1 for a in range(4)])
    x = jnp.take(x, lo, axis=axis) * (1. - w) + jnp.take(x, hi, axis=axis) * w
  return x


def _resize(x, hw, interpolation, align_corners):
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  if interpolation == 'nearest_neighbor':
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), 'nearest')
  if align_corners:
    return _resize_align_corners(x, hw)
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), 'bilinear')


# ----------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------

class ResidualBlock(nn.Module):
  """Pre-activation residual block of the RefineNet backbone: norm-act-conv twice.

  ``down`` halves the resolution by mean pooling (ConvMeanPool, 1x1 ConvMeanPool
  shortcut) when ``dilation == 1``; with dilation > 1 it keeps the resolution and
  uses a dilated 3x3 shortcut.
  """
  features: int
  norm: _NormSpec
  act: Callable[[Any], Any]
  down: bool = False
  dilation: int = 1

  @nn.compact
  def __call__(self, x, y):
    c_in = x.shape[-1]
    h = self.act(self.norm(x, y))
    if self.down:
      h = _conv(h, c_in, dilation=self.dilation)
      h = self.act(self.norm(h, y))
      if self.dilation > 1:
        h = _conv(h, self.features, dilation=self.dilation)
        shortcut = _conv(x, self.features, dilation=self.dilation)
      else:
        h = _mean_pool2(_conv(h, self.features))
        shortcut = _mean_pool2(_conv(x, self.features, kernel=1))
    else:
      h = _conv(h, self.features, dilation=self.dilation)
      h = self.act(self.norm(h, y))
      h = _conv(h, self.features, dilation=self.dilation)
      if c_in == self.features:
        shortcut = x
      elif self.dilation > 1:
        shortcut = _conv(x, self.features, dilation=self.dilation)
      else:
        shortcut = _conv(x, self.features, kernel=1)
    return h + shortcut


class ResidualConvUnit(nn.Module):
  """RCU: ``n_blocks`` residual units of two bias-free 3x3 convs (norm first in NCSN)."""
  n_blocks: int
  norm: _NormSpec
  act: Callable[[Any], Any]

  @nn.compact
  def __call__(self, x, y):
    c = x.shape[-1]
    for _ in range(self.n_blocks):
      residual = x
      for _ in range(2):
        if self.norm.conditional:
          x = self.norm(x, y)
        x = _conv(self.act(x), c, use_bias=False)
      x = x + residual
    return x


class MultiResolutionFusion(nn.Module):
  """MSF: conv each input to ``features``, resize to ``out_hw`` and sum."""
  features: int
  out_hw: Tuple[int, int]
  norm: _NormSpec
  interpolation: str
  align_corners: bool

  @nn.compact
  def __call__(self, xs, y):
    total = 0.
    for x in xs:
      if self.norm.conditional:
        x = self.norm(x, y)
      h = _conv(x, self.features)
      total = total + _resize(h, self.out_hw, self.interpolation, self.align_corners)
    return total


class ChainedResidualPooling(nn.Module):
  """CRP: act, then two chained (pool 5x5 -> bias-free conv) stages summed into x.

  NCSNv2 max-pools; NCSN normalises first and average-pools (zero padding counted).
  """
  norm: _NormSpec
  act: Callable[[Any], Any]

  @nn.compact
  def __call__(self, x, y):
    x = self.act(x)
    path = x
    for _ in range(2):
      if self.norm.conditional:
        path = nn.avg_pool(self.norm(path, y), (5, 5), (1, 1), 'SAME',
                           count_include_pad=True)
      else:
        path = nn.max_pool(path, (5, 5), (1, 1), 'SAME')
      path = _conv(path, x.shape[-1], use_bias=False)
      x = x + path
    return x


class RefineBlock(nn.Module):
  """RefineNet block: RCU per input -> MSF (if >1 input) -> CRP -> output RCU."""
  features: int
  out_hw: Tuple[int, int]
  norm: _NormSpec
  act: Callable[[Any], Any]
  interpolation: str
  align_corners: bool
  start: bool = False
  end: bool = False

  @nn.compact
  def __call__(self, xs, y):
    hs = [ResidualConvUnit(2, self.norm, self.act)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = MultiResolutionFusion(self.features, self.out_hw, self.norm,
                                self.interpolation, self.align_corners)(hs, y)
    h = ChainedResidualPooling(self.norm, self.act)(h, y)
    return ResidualConvUnit(3 if self.end else 1, self.norm, self.act)(h, y)


# ----------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------

class RefineNet(nn.Module):
  """Dilated RefineNet score model shared by NCSN (conditional=True) and NCSNv2.

  Attributes:
    nf: base width.
    stages: backbone stages as (width multiple of nf, dilation), shallowest first.
    refine_widths: RefineBlock widths as multiples of nf, deepest first; one per stage.
    conditional: NCSN (v1): conditional instance norm++ on the noise-level index in
      every block; otherwise NCSNv2 with an unconditional ``normalization``.
    normalization: one of NORMALIZATIONS (NCSN requires 'InstanceNorm++').
    nonlinearity: key of ACTIVATIONS.
    interpolation: one of INTERPOLATIONS, used by multi-resolution fusion.
    align_corners: bilinear resize convention (True reproduces the PyTorch reference).
    channel_var_ddof: ddof of the across-channel variance in instance norm++.
    sigma_min, sigma_max, num_scales: the descending noise-level table.
    scale_by_sigma: divide the output by sigma[label] (NCSNv2 Technique 3).
    centered: inputs already in [-1, 1]; otherwise x is mapped by 2x - 1.
  """
  nf: int = 128
  stages: Sequence[Tuple[int, int]] = _STAGES_32_64
  refine_widths: Sequence[int] = _REFINE_32_64['jax']
  conditional: bool = False
  normalization: str = 'InstanceNorm++'
  nonlinearity: str = 'elu'
  interpolation: str = 'bilinear'
  align_corners: bool = False
  channel_var_ddof: int = 0
  sigma_min: float = 0.01
  sigma_max: float = 50.
  num_scales: int = 232
  scale_by_sigma: bool = True
  centered: bool = False

  def _check(self, x, noise_labels):
    _check_choice('nonlinearity', self.nonlinearity, ACTIVATIONS)
    _check_choice('normalization', self.normalization, NORMALIZATIONS)
    _check_choice('interpolation', self.interpolation, INTERPOLATIONS)
    if self.conditional and self.normalization != 'InstanceNorm++':
      raise ValueError("NCSN (conditional) only supports normalization='InstanceNorm++', "
                       f'got {self.normalization!r}.')
    if len(self.refine_widths) != len(self.stages):
      raise ValueError(f'refine_widths needs one entry per stage: {len(self.stages)} stages, '
                       f'{len(self.refine_widths)} widths.')
    if x.ndim != 4:
      raise ValueError(f'x must be NHWC [B, H, W, C], got shape {x.shape}.')
    n_pool = sum(1 for _, d in self.stages[1:] if d == 1)
    if x.shape[1] % 2**n_pool or x.shape[2] % 2**n_pool:
      raise ValueError(f'Image height and width must be divisible by {2**n_pool} for this '
                       f'network ({n_pool} mean-pool downsamplings), got {x.shape[1:3]}.')
    if noise_labels.shape != x.shape[:1]:
      raise ValueError(f'noise_labels must have shape [B]={x.shape[:1]}, got '
                       f'{noise_labels.shape}.')
    if not jnp.issubdtype(noise_labels.dtype, jnp.integer):
      raise TypeError('NCSN/NCSNv2 are discrete VE models: noise_labels must be integer '
                      'indices into the descending sigma table (index 0 = sigma_max, e.g. '
                      f'round((T - t) (N - 1))), got dtype {noise_labels.dtype}.')

  @nn.compact
  def __call__(self, x, noise_labels, train: bool = False):
    """x [B, H, W, C], noise_labels [B] int -> score estimate [B, H, W, C]."""
    del train  # No dropout or batch statistics.
    self._check(x, noise_labels)
    act = ACTIVATIONS[self.nonlinearity]
    norm = _NormSpec(self.normalization, self.conditional, self.num_scales,
                     self.channel_var_ddof)
    y = noise_labels

    h = x if self.centered else 2. * x - 1.
    h = _conv(h, self.nf)
    skips = []
    for i, (mult, dilation) in enumerate(self.stages):
      h = ResidualBlock(mult * self.nf, norm, act, down=i > 0, dilation=dilation)(h, y)
      h = ResidualBlock(mult * self.nf, norm, act, dilation=dilation)(h, y)
      skips.append(h)

    last = len(self.refine_widths) - 1
    for i, mult in enumerate(self.refine_widths):
      skip = skips[last - i]
      xs = [skip] if i == 0 else [skip, h]
      h = RefineBlock(mult * self.nf, tuple(skip.shape[1:3]), norm, act, self.interpolation,
                      self.align_corners, start=i == 0, end=i == last)(xs, y)

    h = act(norm(h, y))
    h = _conv(h, x.shape[-1])  # [B, H, W, C]
    if self.scale_by_sigma:
      sigmas = descending_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
      h = h / sigmas[y][:, None, None, None].astype(h.dtype)
    return h


def _check_choice(field, value, choices):
  if value not in choices:
    raise ValueError(f'Unknown {field} {value!r}; valid choices: {sorted(choices)}.')


# ----------------------------------------------------------------------------------
# The networks of the reference configs ('ncsn', 'ncsnv2', 'ncsnv2_64', ...)
# ----------------------------------------------------------------------------------

# Image sizes (px, inclusive) each named network is built for.
IMAGE_SIZES = {'ncsn': (1, 95), 'ncsnv2_64': (1, 95), 'ncsnv2_128': (96, 128),
               'ncsnv2_256': (129, 256)}


def check_image_size(name: str, image_size: int, field: str = 'image_size') -> None:
  """Raises ValueError, naming ``field``, when ``image_size`` is outside IMAGE_SIZES[name]."""
  low, high = IMAGE_SIZES[name]
  if not low <= image_size <= high:
    raise ValueError(f"model '{name}' is built for {low}-{high} px images, got "
                     f'{field}={image_size}. Use ncsnv2_64 below 96 px, ncsnv2_128 '
                     'for 96-128 px and ncsnv2_256 for 129-256 px.')


def _reference_fields(reference: str) -> dict:
  _check_choice('reference', reference, REFERENCES)
  return dict(align_corners=reference == 'pytorch',
              channel_var_ddof=1 if reference == 'pytorch' else 0)


def ncsn(*, image_size: int, reference: str = 'jax', scale_by_sigma: bool = False,
         **fields) -> RefineNet:
  """NCSN (v1): conditional RefineNet for images below 96 px; no output scaling by default.

  ``fields`` are further RefineNet fields (nf, normalization, sigma_min, ...).
  """
  check_image_size('ncsn', image_size)
  by_reference = _reference_fields(reference)
  return RefineNet(stages=_STAGES_32_64, refine_widths=_REFINE_32_64[reference],
                   conditional=True, scale_by_sigma=scale_by_sigma, **by_reference, **fields)


def ncsnv2_64(*, image_size: int, reference: str = 'jax', **fields) -> RefineNet:
  """NCSNv2 for images below 96 px (CIFAR-10 and CelebA-64)."""
  check_image_size('ncsnv2_64', image_size)
  by_reference = _reference_fields(reference)
  return RefineNet(stages=_STAGES_32_64, refine_widths=_REFINE_32_64[reference], **by_reference,
                   **fields)


def ncsnv2_128(*, image_size: int, reference: str = 'jax', **fields) -> RefineNet:
  """NCSNv2 for 96-128 px images (LSUN bedroom/tower at 128 px)."""
  check_image_size('ncsnv2_128', image_size)
  return RefineNet(stages=_STAGES_128, refine_widths=_REFINE_128,
                   **_reference_fields(reference), **fields)


def ncsnv2_256(*, image_size: int, reference: str = 'jax', **fields) -> RefineNet:
  """NCSNv2 for 129-256 px images."""
  check_image_size('ncsnv2_256', image_size)
  return RefineNet(stages=_STAGES_256, refine_widths=_REFINE_256,
                   **_reference_fields(reference), **fields)


def ncsnv2(*, image_size: int, reference: str = 'jax', **fields) -> RefineNet:
  """NCSNv2 picking the variant from ``image_size``, as the reference does."""
  for name, build in (('ncsnv2_64', ncsnv2_64), ('ncsnv2_128', ncsnv2_128),
                      ('ncsnv2_256', ncsnv2_256)):
    if image_size <= IMAGE_SIZES[name][1]:
      return build(image_size=image_size, reference=reference, **fields)
  raise ValueError(f'No NCSNv2 network for {image_size} px images (largest supported: 256 px).')
