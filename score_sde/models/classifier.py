"""Noise-conditional Wide-ResNet classifier p_t(y | x(t)) for class-conditional sampling.

Class-conditional sampling adds grad_x log p_t(y | x) to the unconditional score
(Song et al., ICLR 2021, Sec. 5 and appendix I.4). The classifier is a WRN-28-10
(Zagoruyko & Komodakis, "Wide Residual Networks", 2016) with GroupNorm in place of
batch norm and a noise embedding added inside every residual block:

- input: per-image standardisation (x - mean) / max(std, 1/sqrt(H W C));
- noise embedding: random Fourier features of ln sigma (128 frozen frequencies drawn
  from N(0, 16^2), output [sin 2 pi W ln sigma, cos 2 pi W ln sigma]), then
  Dense(512) -> swish -> Dense(512); each block adds Dense(C)(swish(embedding)) after
  its first convolution;
- shortcuts are parameter-free: average pooling by the stride and zero channel padding.

``noise_labels`` are the VE noise scales sigma (the marginal std at time t), as in the
reference's controllable-generation code. The reference also standardises its [0, 1]
CIFAR-10 input channel-wise before the network; ``standardize_cifar10`` does that.

The parameter tree uses the reference's module names (``init_conv``,
``WideResnetGroup_g/WideResnetBlock_b/{init_bn, conv1, Dense_0, bn_2, conv2}``,
``pre-pool-bn``, ...), so a released reference checkpoint restores into it unchanged.
There is no dropout or batch statistic: ``train`` changes nothing.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models.conv import Conv

CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)

# Kaiming normal with fan_out, gain 2, for convolution kernels (WRN reference init).
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def standardize_cifar10(x):
  """Channel-wise CIFAR-10 standardisation of [0, 1] images x [B, H, W, 3]."""
  return (x - jnp.asarray(CIFAR10_MEAN, x.dtype)) / jnp.asarray(CIFAR10_STD, x.dtype)


def _output_init(key, shape, dtype=jnp.float32):
  """U(-1/sqrt(K), 1/sqrt(K)) for the final Dense with K outputs."""
  bound = 1. / np.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _norm_relu(x, name, relu=True):
  """GroupNorm with min(C // 4, 32) groups (eps 1e-5), optionally followed by ReLU."""
  x = nn.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)
  return nn.relu(x) if relu else x


class _FourierFeatures(nn.Module):
  """Frozen random Fourier features [sin 2 pi z W, cos 2 pi z W] of a scalar z [B]."""
  embedding_size: int = 128
  scale: float = 16.

  @nn.compact
  def __call__(self, z):
    w = jax.lax.stop_gradient(
        self.param('W', nn.initializers.normal(self.scale), (self.embedding_size,)))
    proj = 2 * jnp.pi * z[:, None] * w[None, :]  # [B, E]
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)  # [B, 2E]


class WideResnetBlock(nn.Module):
  """Pre-activation WRN block with an additive noise embedding after the first conv."""
  channels: int
  stride: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, emb):
    if self.activate_before_residual:
      x = _norm_relu(x, 'init_bn')
      h = x
    else:
      h = _norm_relu(x, 'init_bn')
    h = Conv(self.channels, (3, 3), (self.stride, self.stride), padding='SAME',
             use_bias=False, kernel_init=_conv_init, name='conv1')(h)
    h = h + nn.Dense(self.channels, name='Dense_0')(nn.swish(emb))[:, None, None, :]
    h = _norm_relu(h, 'bn_2')
    h = Conv(self.channels, (3, 3), padding='SAME', use_bias=False,
             kernel_init=_conv_init, name='conv2')(h)
    if x.shape[-1] != self.channels:
      s = x.shape[2] // h.shape[2]
      x = nn.avg_pool(x, (s, s), (s, s))
      x = jnp.pad(x, [(0, 0)] * 3 + [(0, self.channels - x.shape[-1])])
    return h + x


class WideResnetGroup(nn.Module):
  """``blocks`` WRN blocks; the first one carries the stride."""
  blocks: int
  channels: int
  stride: int = 1
  activate_before_residual: bool = False

  @nn.compact
  def __call__(self, x, emb):
    for i in range(self.blocks):
      x = WideResnetBlock(self.channels, self.stride if i == 0 else 1,
                          self.activate_before_residual and i == 0,
                          name=f'WideResnetBlock_{i}')(x, emb)
    return x


class NoiseConditionalWideResNet(nn.Module):
  """WRN-``depth``-``widen_factor`` classifier conditioned on the VE noise scale sigma.

  Defaults are the reference's CIFAR-10 classifier (WRN-28-10, 10 classes).
  """
  depth: int = 28
  widen_factor: int = 10
  num_classes: int = 10
  embedding_size: int = 128
  fourier_scale: float = 16.

  @nn.compact
  def __call__(self, x, noise_labels, train: bool = False):
    """x [B, H, W, C] (already standardised), noise_labels sigma [B] -> logits [B, K]."""
    del train  # No dropout or batch statistics.
    if (self.depth - 4) % 6 or self.depth < 10:
      raise ValueError(f'WRN depth must be 6n + 4 with n >= 1 (e.g. 28), got {self.depth}.')
    if x.ndim != 4:
      raise ValueError(f'x must be NHWC [B, H, W, C], got shape {x.shape}.')
    if noise_labels.shape != x.shape[:1]:
      raise ValueError(f'noise_labels must be the noise scales sigma with shape [B]='
                       f'{x.shape[:1]}, got {noise_labels.shape}.')
    blocks = (self.depth - 4) // 6
    n = np.prod(x.shape[1:])
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) / jnp.maximum(std, 1. / np.sqrt(n))

    emb = _FourierFeatures(self.embedding_size, self.fourier_scale,
                           name='GaussianFourierProjection_0')(jnp.log(noise_labels))
    emb = nn.Dense(4 * self.embedding_size, name='Dense_0')(emb)
    emb = nn.Dense(4 * self.embedding_size, name='Dense_1')(nn.swish(emb))  # [B, 512]

    h = Conv(16, (3, 3), padding='SAME', use_bias=False, kernel_init=_conv_init,
             name='init_conv')(x)
    for g, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
      h = WideResnetGroup(blocks, width * self.widen_factor, stride,
                          activate_before_residual=g == 0,
                          name=f'WideResnetGroup_{g}')(h, emb)
    h = _norm_relu(h, 'pre-pool-bn')
    h = jnp.mean(h, axis=(1, 2))  # [B, C]
    return nn.Dense(self.num_classes, kernel_init=_output_init, name='Dense_2')(h)

