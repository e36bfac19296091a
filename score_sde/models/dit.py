"""DiT, the Diffusion Transformer (Peebles & Xie, "Scalable Diffusion Models with Transformers",
ICCV 2023), as a score network of this codebase.

Call: `apply({'params': p}, x, noise_labels, train=..., class_labels=None)`, x [B, H, W, C],
noise_labels [B], any real value (999·t for VP, σ for VE, ln(σ)/4 for EDM and consistency models):
the sinusoidal embedding is defined for every real label.

Structure (Sec. 3.2 of the paper): patchify (p×p patches, a linear patch embedding) + a fixed 2-D
sin-cos position embedding (a numpy constant, not a parameter); conditioning c = MLP(sinusoid(label))
+ class embedding; `depth` adaLN-Zero blocks; a final adaLN layer; unpatchify.

* Class conditioning (`num_classes` K > 0): `class_labels` int [B] in 0..K, K the null class of
  classifier-free guidance (the table has K + 1 rows, as the reference's with label dropout > 0).
  Labels are NOT dropped here: the class-conditional losses drop them to K with
  `training.class_dropout` before calling the network, which is the reference's `token_drop` moved
  out of the module. K = 0 builds no class table (an unconditional DiT).
* `learn_sigma` gives the final layer 2C output channels (the reference's ε and variance
  interpolation v, trained by the hybrid L_vlb loss of Nichol & Dhariwal 2021). Every score
  parametrisation here reads C channels, so the call returns the first C (ε or whatever the
  objective trains) unless `return_sigma`; the σ half keeps its parameters for checkpoint import
  and parameter-count parity and, untouched by our losses, gets no gradient.
* No dropout: `train` is accepted for the common call convention and ignored.
* The compute dtype is `dtype`, or when None (the default) the dtype of x, as for the UNets
  (`config.model.compute_dtype` casts x in `training.linen_model_fn`); parameters stay float32, the
  LayerNorm statistics, the attention softmax (jax.nn.dot_product_attention's float32 logits) and
  the timestep sinusoid are float32, and the output is float32.
* `remat` runs each block under `jax.checkpoint` (nn.remat), with the same parameter paths.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models import layers


def sincos_pos_embed_2d(hidden_size: int, grid_h: int, grid_w: int) -> np.ndarray:
  """The fixed 2-D position embedding [grid_h·grid_w, D] (row-major tokens): the first D/2 channels
  encode the column, the last D/2 the row, each as [sin(pos ω_k), cos(pos ω_k)] with
  ω_k = 10000^(-k/(D/4)) (MAE and DiT)."""
  if hidden_size % 4:
    raise ValueError(f"dit: hidden_size must be divisible by 4 for the 2-D sin-cos position "
                     f"embedding, got {hidden_size}.")
  quarter = hidden_size // 4
  omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                           np.arange(grid_w, dtype=np.float64), indexing="ij")

  def axis(pos):
    angles = pos.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([axis(cols), axis(rows)], axis=1).astype(np.float32)


def timestep_embedding(labels, dim: int = 256, max_period: float = 10000.0):
  """[cos(label f_i), sin(label f_i)] with f_i = max_period^(-i/(dim/2)) (GLIDE/DiT order), [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = labels.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def patchify(x, p: int):
  """[B, H, W, C] -> [B, (H/p)(W/p), p·p·C] tokens in row-major patch order, each patch flattened
  as (row in patch, column in patch, channel)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens, p: int, h: int, w: int):
  """The inverse of `patchify`: [B, (h/p)(w/p), p·p·C] -> [B, h, w, C]."""
  b, _, d = tokens.shape
  c = d // (p * p)
  x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def _modulate(x, shift, scale):  # x [B, T, D], shift/scale [B, 1, D]
  return x * (1 + scale) + shift


def _layer_norm(dtype):
  """LayerNorm without affine parameters, ε = 1e-6 (adaLN supplies the scale and shift)."""
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)


_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (ViT), via jax.nn.dot_product_attention."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, T, D]
    b, t, d = x.shape
    qkv = nn.Dense(3 * d, kernel_init=_xavier, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads), 2, 0)
    out = jax.nn.dot_product_attention(q, k, v)  # [B, T, heads, D/heads]
    return nn.Dense(d, kernel_init=_xavier, dtype=self.dtype, name="proj")(out.reshape(b, t, d))


class Mlp(nn.Module):
  """Dense → GELU (tanh approximation) → Dense."""
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(self.hidden, kernel_init=_xavier, dtype=self.dtype, name="fc1")(x)
    return nn.Dense(d, kernel_init=_xavier, dtype=self.dtype, name="fc2")(
        nn.gelu(x, approximate=True))


class DiTBlock(nn.Module):
  """adaLN-Zero block (Sec. 3.2): shift, scale and gate of both branches regressed from c by a
  zero-initialised SiLU → Dense(6D), so every block starts as the identity."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, c):  # x [B, T, D], c [B, D]
    d = x.shape[-1]
    mod = nn.Dense(6 * d, kernel_init=_zeros, dtype=self.dtype, name="adaLN_modulation")(
        nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
        mod[:, None, :], 6, axis=-1)
    h = _modulate(_layer_norm(self.dtype)(x), shift_msa, scale_msa)
    x = x + gate_msa * Attention(self.num_heads, self.dtype, name="attn")(h)
    h = _modulate(_layer_norm(self.dtype)(x), shift_mlp, scale_mlp)
    return x + gate_mlp * Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(h)


class DiT(nn.Module):
  """Diffusion Transformer; sizes in `configs/architectures.py` (`dit`)."""
  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 0
  learn_sigma: bool = False
  return_sigma: bool = False
  frequency_embedding_size: int = 256
  dtype: Any = None  # the compute dtype; None: x's dtype
  # Channels of the low-resolution input of a super-resolution network (0: none): resized to H×W
  # (bicubic) and concatenated to x before patchify; its augmentation level joins c.
  low_res_channels: int = 0
  # The trainable copy of a ControlNet (models/controlnet.py): patch embedding, conditioning and
  # the `depth` blocks, returning each block's output tokens; see __call__.
  control_copy: bool = False
  # jax.checkpoint (nn.remat) per block: less activation memory, more compute.
  remat: bool = False

  def validate(self, x_shape) -> None:
    """Fails early on fields or inputs the architecture cannot take."""
    layers.check_num_classes("dit", self.num_classes, True)
    if self.hidden_size % self.num_heads:
      raise ValueError(f"dit: hidden_size={self.hidden_size} must be divisible by "
                       f"num_heads={self.num_heads}.")
    if self.return_sigma and not self.learn_sigma:
      raise ValueError("dit: return_sigma=True needs learn_sigma=True (no σ channels otherwise).")
    if len(x_shape) != 4 or x_shape[1] % self.patch_size or x_shape[2] % self.patch_size:
      raise ValueError(f"dit: expects x [B, H, W, C] with H and W divisible by "
                       f"patch_size={self.patch_size}; got {tuple(x_shape)}.")

  @nn.compact
  def __call__(self, x, noise_labels, train: bool = True, class_labels=None, low_res=None,
               aug_level=None, control=None, hint_features=None):
    """ControlNet for DiT (as PixArt-δ, Chen et al. 2024): ``control`` is a list of n <= depth
    residual token maps [B, T, D] added to the outputs of the first n blocks. With
    ``control_copy`` the module is the trainable copy: ``hint_features`` [B, T, D] is added to the
    embedded tokens and every block's output is returned."""
    del train  # no dropout in DiT
    self.validate(x.shape)
    b, h, w, c = x.shape
    layers.check_class_labels("dit", self.num_classes, class_labels, b)
    layers.check_low_res("dit", self.low_res_channels, low_res, aug_level, x.shape)
    if noise_labels.shape != (b,):
      raise ValueError(f"dit expects noise_labels [B]=({b},); got {noise_labels.shape}.")
    p, d = self.patch_size, self.hidden_size
    dtype = x.dtype if self.dtype is None else self.dtype
    pos = sincos_pos_embed_2d(d, h // p, w // p)  # [T, D], a constant
    x_in = x if low_res is None else jnp.concatenate(
        [x, layers.upsample_low_res(low_res, h, w)], axis=-1)
    tokens = nn.Dense(d, kernel_init=_xavier, dtype=dtype, name="x_embedder")(
        patchify(x_in, p)) + jnp.asarray(pos, dtype)  # [B, T, D]
    tokens = layers.add_hint_features(tokens, hint_features, self.control_copy, "dit")
    control = [] if control is None else list(control)
    if len(control) > self.depth or any(r.shape != tokens.shape for r in control):
      raise ValueError(f"dit: control must be at most depth={self.depth} residuals of the tokens' "
                       f"shape {tuple(tokens.shape)}; got {[tuple(r.shape) for r in control]}.")

    normal = nn.initializers.normal(0.02)
    temb = timestep_embedding(noise_labels, self.frequency_embedding_size)
    temb = nn.Dense(d, kernel_init=normal, dtype=dtype, name="t_embedder_0")(temb)
    cond = nn.Dense(d, kernel_init=normal, dtype=dtype, name="t_embedder_2")(nn.silu(temb))
    if self.num_classes:
      cond = cond + nn.Embed(self.num_classes + 1, d, embedding_init=normal, dtype=dtype,
                             name="y_embedder")(class_labels)  # [B, D]
    if self.low_res_channels:
      cond = cond + nn.Dense(d, kernel_init=normal, dtype=dtype, name="aug_embedder")(
          timestep_embedding(999.0 * aug_level, self.frequency_embedding_size))

    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    features = []
    for i in range(self.depth):
      tokens = block(self.num_heads, self.mlp_ratio, dtype, name=f"blocks_{i}")(tokens, cond)
      features.append(tokens)
      if i < len(control):
        tokens = tokens + control[i]
    if self.control_copy:
      return features

    out_channels = 2 * c if self.learn_sigma else c
    shift, scale = jnp.split(nn.Dense(2 * d, kernel_init=_zeros, dtype=dtype,
                                      name="final_adaLN_modulation")(nn.silu(cond))[:, None], 2,
                             axis=-1)
    tokens = _modulate(_layer_norm(dtype)(tokens), shift, scale)
    tokens = nn.Dense(p * p * out_channels, kernel_init=_zeros, dtype=dtype,
                      name="final_linear")(tokens)  # [B, T, p·p·C_out]
    out = unpatchify(tokens, p, h, w).astype(jnp.float32)  # [B, H, W, C_out]
    return out if self.return_sigma else out[..., :c]
