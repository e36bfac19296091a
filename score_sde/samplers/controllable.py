"""Inpainting and colorization (Song et al., ICLR 2021, Appendix I.2-I.3).

PC sampling (``pc.sample_pc``) in which the observed coordinates are replaced after every update by
a forward-diffused copy of the observation, x_known ~ p_0t(. | y), through the sampler's
``constraint`` hook. Only the PC sampler has that hook, so inpainting and colorization run with
``sample_pc`` alone. ``model`` is a score function or a ``parametrization.Denoiser``, as for every
sampler. This "replacement" method is an approximation of sampling from p(x | y):
docs/controllable.md gives the bias measured on Gaussians, where the exact conditional is known.

Guided scores (classifier and classifier-free guidance) are in ``guidance.py``.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE, batch_broadcast
from score_sde.samplers import pc
from score_sde.samplers.common import per_sample_normal

Array = jax.Array

# Orthonormal basis whose first column is the gray direction (1, 1, 1) / sqrt(3); the other two
# span the colour plane (Appendix I.3). x @ COLOR_BASIS decouples gray from colour.
COLOR_BASIS = np.stack([np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0),
                        np.array([-2.0, 1.0, 1.0]) / np.sqrt(6.0),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)], axis=1)  # [3, 3]


# --- inpainting and colorization: PC sampling with replacement ---------------------------------

@struct.dataclass
class LinearObservation:
  """Observed coordinates in an orthonormal channel basis: (x @ basis) * mask == y * mask.

  As a ``sample_pc`` constraint it replaces the observed coordinates by m(t) y + std(t) z: a draw
  from the perturbation kernel p_0t(. | y), which the isotropic noise of the SDE makes valid in
  any orthonormal basis. ``x_mean`` gets the noise-free m(t) y.
  """

  sde: SDE
  y: Array  # [B, ..., C] observed values in the basis (unobserved entries are ignored)
  mask: Array  # broadcastable to y: 1 where observed, 0 where generated
  basis: Array  # [C, C] orthonormal

  def __call__(self, keys: Array, x: Array, x_mean: Array, t: Array) -> tuple[Array, Array]:
    m, std = self.sde.marginal_params(t)
    y_mean = batch_broadcast(m, self.y) * self.y
    y_t = y_mean + batch_broadcast(std, self.y) * per_sample_normal(keys, self.y.shape, self.y.dtype)
    return self.replace_observed(x, y_t), self.replace_observed(x_mean, y_mean)

  def replace_observed(self, x: Array, values: Array) -> Array:
    """x with its observed coordinates (in the basis) set to ``values``."""
    u = x @ self.basis.astype(x.dtype)  # [B, ..., C] decoupled coordinates
    u = jnp.where(self.mask > 0, values.astype(x.dtype), u)
    return u @ self.basis.T.astype(x.dtype)


def _check_mask(mask, data_shape) -> Array:
  mask = jnp.asarray(mask)
  try:
    np.broadcast_shapes(mask.shape, data_shape)
  except ValueError:
    raise ValueError(f"mask of shape {mask.shape} does not broadcast to the data's shape "
                     f"{data_shape}; use [B, H, W, 1], [H, W, 1] or the data's shape.") from None
  if not isinstance(mask, jax.core.Tracer) and not bool(jnp.all((mask == 0) | (mask == 1))):
    raise ValueError("mask must hold only 0 (generate) and 1 (keep the data) values.")
  return jnp.broadcast_to(mask, data_shape)


def inpaint(key: Array, model: Model, sde: SDE, data: Array, mask: Array,
            **pc_options) -> tuple[Array, dict]:
  """Fills the coordinates where ``mask == 0`` given ``data`` where ``mask == 1`` (Appendix I.2).

  ``data`` [B, ...] is in the model's (scaled) data space; ``mask`` broadcasts to it.
  ``model`` is a score function or a ``Denoiser``; ``pc_options`` are those of ``pc.sample_pc``
  (predictor, corrector, snr, n_steps_each, ...): inpainting runs with the PC sampler only.
  The observed coordinates of the result equal ``data`` when ``denoise`` (the default).
  Returns (x [B, ...], info) as ``sample_pc``.
  """
  data = jnp.asarray(data)
  mask = _check_mask(mask, data.shape).astype(data.dtype)
  basis = jnp.eye(data.shape[-1], dtype=data.dtype)
  observation = LinearObservation(sde=sde, y=data, mask=mask, basis=basis)
  return pc.sample_pc(key, model, sde, data.shape, constraint=observation, **pc_options)


def to_gray(images: Array) -> Array:
  """The gray image [B, H, W, 1]: the mean of the colour channels of images [B, H, W, 3]."""
  return jnp.mean(images, axis=-1, keepdims=True)


def colorize(key: Array, model: Model, sde: SDE, gray: Array, **pc_options) -> tuple[Array, dict]:
  """Colour images [B, H, W, 3] whose channel mean is ``gray`` [B, H, W, 1] (Appendix I.3).

  Inpainting in the basis ``COLOR_BASIS``, where the gray coordinate sqrt(3) gray is observed and
  the two colour coordinates are generated. ``gray`` is in the model's data space (for centred
  data, the mean of the centred channels). ``model`` and ``pc_options`` as in ``inpaint`` (PC
  sampler only). Returns (x, info) as ``sample_pc``.
  """
  gray = jnp.asarray(gray)
  if gray.ndim != 4 or gray.shape[-1] != 1:
    raise ValueError(f"gray must be [B, H, W, 1] (e.g. controllable.to_gray(images)); got shape "
                     f"{gray.shape}.")
  y = jnp.concatenate([np.sqrt(3.0) * gray, jnp.zeros_like(gray), jnp.zeros_like(gray)], axis=-1)
  mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
  observation = LinearObservation(sde=sde, y=y, mask=mask, basis=jnp.asarray(COLOR_BASIS, gray.dtype))
  return pc.sample_pc(key, model, sde, y.shape, constraint=observation, **pc_options)
