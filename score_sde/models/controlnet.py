"""ControlNet (Zhang, Rao & Agrawala, ICCV 2023): spatial control of a frozen score network.

A trainable copy of the base network's encoder (NCSN++/DDPM++/DDPM: the down path and middle
block; DiT: the first `control_depth` blocks) sees the noisy input plus the hint features of the
control image, and each of its features goes through a zero-initialised 1×1 convolution ("zero
convolution", eq. 1-2 of the paper) before it is added to the base network's matching skip
connection or middle feature (DiT: block output). The hint encoder (a few 3×3 convolutions, Sec.
3.2) ends in a zero convolution too, so at initialisation every residual is exactly zero and the
controlled network is the base network.

`ControlNet(...)(x, noise_labels, hint, train=, class_labels=)` returns the residuals, to be passed
as the base network's ``control``; `ControlledModel` is the two together. `for_backbone` builds the
ControlNet of a base module, and `copy_encoder_params` starts its copy (parameters 'encoder') at
the base's weights.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models.conv import Conv

BACKBONES = ("ncsnpp", "ddpm", "dit")  # backbones with `control` and `control_copy`

_zeros = nn.initializers.zeros


class HintEncoder(nn.Module):
  """Control image [B, Hc, Wc, C] -> first feature map [B, Hc/s, Wc/s, out_channels]: 3×3
  convolutions with SiLU (halving the size while it exceeds s), then a zero convolution (kernel
  max(3, s), stride s)."""
  channels: Sequence[int]
  out_channels: int
  stride: int  # control image side / first feature map side (DiT: times the patch size)

  @nn.compact
  def __call__(self, hint):
    h, s = hint, self.stride
    for i, ch in enumerate(self.channels):
      down = 2 if (s > 2 and s % 2 == 0 and i % 2 == 1) else 1
      h = nn.silu(Conv(ch, (3, 3), strides=down, name=f"conv_{i}")(h))
      s //= down
    k = max(3, s)
    return Conv(self.out_channels, (k, k), strides=s, kernel_init=_zeros, bias_init=_zeros,
                name="zero_conv")(h)


class ControlNet(nn.Module):
  """The trainable side of a ControlNet; its outputs are the base network's ``control``."""
  encoder: nn.Module  # the base backbone with control_copy=True: the trainable copy
  feature_channels: int  # channels of the copy's first feature map (nf; DiT: hidden_size)
  hint_stride: int  # control image side / first feature map side
  tokens: bool = False  # DiT: the first feature map is flattened to row-major tokens
  hint_channels: Sequence[int] = (16, 16, 32, 32)

  @nn.compact
  def __call__(self, x, noise_labels, hint, train: bool = True, **condition):
    b, h, w = x.shape[:3]
    if hint.ndim != 4 or hint.shape[0] != b or hint.shape[1] % self.hint_stride:
      raise ValueError(f"controlnet: the control image must be [B={b}, Hc, Wc, C] with Hc a "
                       f"multiple of {self.hint_stride}; got {tuple(hint.shape)}.")
    features = HintEncoder(self.hint_channels, self.feature_channels, self.hint_stride,
                           name="input_hint_block")(hint)
    if self.tokens:
      features = features.reshape(b, -1, self.feature_channels)
    outputs = self.encoder(x, noise_labels, train=train, hint_features=features, **condition)
    return [nn.Dense(o.shape[-1], kernel_init=_zeros, bias_init=_zeros, name=f"zero_convs_{i}")(o)
            for i, o in enumerate(outputs)]


class ControlledModel(nn.Module):
  """The base network under a ControlNet: parameters {'base': the base's, 'controlnet': ...}, so a
  base checkpoint's parameters go under 'base' unchanged. ``control_scale`` multiplies every
  residual (0: the base network exactly)."""
  base: nn.Module
  controlnet: ControlNet

  @nn.compact
  def __call__(self, x, noise_labels, train: bool = True, hint=None, control_scale=1.0,
               **condition):
    if hint is None:
      raise ValueError("A ControlNet model takes the control image: pass hint [B, Hc, Wc, C].")
    residuals = self.controlnet(x, noise_labels, hint, train=train, **condition)
    return self.base(x, noise_labels, train=train,
                     control=[control_scale * r for r in residuals], **condition)


def for_backbone(base: nn.Module, name: str, model_side: int, control_side: int,
                 control_depth: int = 0, hint_channels: Sequence[int] = (16, 16, 32, 32)) -> ControlNet:
  """The ControlNet of the base module ``base`` (config.model.name ``name``) whose input is
  ``model_side`` wide and whose control images are ``control_side`` wide (the image size: larger
  than the model's in latent diffusion). ``control_depth``: DiT blocks copied (0: half)."""
  if name not in BACKBONES:
    raise ValueError(f"ControlNet needs a backbone with skip features: config.model.name one of "
                     f"{list(BACKBONES)}, not {name!r}.")
  if control_side % model_side:
    raise ValueError(f"The control image side {control_side} must be a multiple of the network's "
                     f"input side {model_side}.")
  stride = control_side // model_side
  if name == "dit":
    depth = control_depth or max(base.depth // 2, 1)
    if not 1 <= depth <= base.depth:
      raise ValueError(f"config.controlnet.control_depth={control_depth} must be in "
                       f"[0, {base.depth}] (0: half of the DiT's blocks).")
    return ControlNet(encoder=base.clone(control_copy=True, depth=depth, parent=None),
                      feature_channels=base.hidden_size, hint_stride=stride * base.patch_size,
                      tokens=True, hint_channels=tuple(hint_channels))
  return ControlNet(encoder=base.clone(control_copy=True, parent=None), feature_channels=base.nf,
                    hint_stride=stride, hint_channels=tuple(hint_channels))


def copy_encoder_params(control_params: Any, base_params: Any) -> Any:
  """``control_params`` with its copy (``control_params['encoder']``) set to the base's weights of
  the same names (Sec. 3.1: the trainable copy starts as the locked model)."""
  copy = control_params["encoder"]
  flat_base = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(base_params)}
  leaves = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(copy):
    name = jax.tree_util.keystr(path)
    source = flat_base.get(name)
    if source is None or source.shape != leaf.shape:
      raise ValueError(f"The ControlNet copy's parameter {name} {tuple(leaf.shape)} has no match in "
                       "the base network; the copy must be built from the base's own module.")
    leaves.append(jnp.array(source, dtype=leaf.dtype))
  return {**control_params, "encoder": jax.tree.unflatten(jax.tree.structure(copy), leaves)}
