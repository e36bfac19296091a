"""The PatchGAN discriminator of pix2pix (Isola et al. 2017) as taming-transformers' and LDM's
autoencoder losses use it (`NLayerDiscriminator`, Esser et al. 2021).

conv4×4/2 (ndf) → LeakyReLU(0.2); for n = 1..n_layers−1: conv4×4/2 (ndf·min(2ⁿ, 8), no bias) → norm →
LeakyReLU; conv4×4/1 (ndf·min(2^n_layers, 8), no bias) → norm → LeakyReLU; conv4×4/1 → one logit per
patch, [B, H', W', 1]. All convolutions pad by 1. Weights are N(0, 0.02), norm scales N(1, 0.02)
(taming's `weights_init`).

The norm is BatchNorm in training mode, i.e. normalised by the statistics of the batch it sees: the
discriminator is only ever run while training the autoencoder, so no running averages are kept
(the parameters are the same as taming's BatchNorm2d weight and bias).
"""
import flax.linen as nn
import jax.numpy as jnp

from score_sde.models.conv import Conv

_init = nn.initializers.normal(0.02)


def _scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + _init(key, shape, dtype)


class BatchStatNorm(nn.Module):
  """Per-channel normalisation by the batch's mean and (biased) variance, with a learned affine."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    scale = self.param("scale", _scale_init, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return (x - mean) / jnp.sqrt(var + self.eps) * scale + bias


class NLayerDiscriminator(nn.Module):
  """Input [B, H, W, C] in the autoencoder's data space; output patch logits [B, H', W', 1]. With
  4×4 kernels and padding 1 the input side must be at least 2^(n_layers + 1) · (3 / 2) or so for the
  final maps to be non-empty (16×16 digits: n_layers ≤ 1; 256×256: the default 3)."""
  ndf: int = 64
  n_layers: int = 3

  @nn.compact
  def __call__(self, x):
    conv = lambda f, s, bias, name: Conv(f, (4, 4), strides=(s, s), padding=((1, 1), (1, 1)),
                                         use_bias=bias, kernel_init=_init, name=name)
    h = nn.leaky_relu(conv(self.ndf, 2, True, "conv_0")(x), 0.2)
    for n in range(1, self.n_layers + 1):
      stride = 2 if n < self.n_layers else 1
      h = conv(self.ndf * min(2**n, 8), stride, False, f"conv_{n}")(h)
      h = nn.leaky_relu(BatchStatNorm(name=f"norm_{n}")(h), 0.2)
    return conv(1, 1, True, "conv_out")(h)
