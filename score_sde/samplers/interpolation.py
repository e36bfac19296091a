"""Interpolation between data points through their probability-flow ODE latents (Song et al., ICLR
2021, Sec. 4.3 and Fig. 3): encode x_a, x_b to z = x(T), interpolate the latents, decode.

Latents of a Gaussian prior concentrate on a sphere of radius ≈ prior_std √D, so spherical
interpolation (slerp, Shoemake 1985) keeps intermediate latents typical where linear interpolation
shrinks their norm towards the middle and decodes to atypical points.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from score_sde.diffusion.parametrization import Model
from score_sde.diffusion.sde import SDE
from score_sde.samplers import ode

Array = jax.Array


def lerp(z0: Array, z1: Array, alpha: Array) -> Array:
  """(1 - α) z0 + α z1 for latents [B, ...] and weights α [K]; returns [K, B, ...]."""
  a = alpha.reshape((-1,) + (1,) * z0.ndim)
  return (1.0 - a) * z0[None] + a * z1[None]


def slerp(z0: Array, z1: Array, alpha: Array) -> Array:
  """Spherical interpolation per sample: [sin((1-α)ω) z0 + sin(α ω) z1] / sin ω, with ω the angle
  between z0_b and z1_b; falls back to lerp for (nearly) parallel latents. Returns [K, B, ...]."""
  flat0 = z0.reshape(z0.shape[0], -1)
  flat1 = z1.reshape(z1.shape[0], -1)
  cos = jnp.sum(flat0 * flat1, -1) / (jnp.linalg.norm(flat0, axis=-1) * jnp.linalg.norm(flat1, axis=-1))
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))  # [B]
  a = alpha[:, None]  # [K, 1]
  sin_omega = jnp.sin(omega)
  parallel = sin_omega < 1e-6
  safe = jnp.where(parallel, 1.0, sin_omega)
  w0 = jnp.where(parallel, 1.0 - a, jnp.sin((1.0 - a) * omega) / safe)  # [K, B]
  w1 = jnp.where(parallel, a, jnp.sin(a * omega) / safe)
  bshape = w0.shape + (1,) * (z0.ndim - 1)
  return w0.reshape(bshape) * z0[None] + w1.reshape(bshape) * z1[None]


INTERPOLANTS = {"slerp": slerp, "lerp": lerp}


def interpolate(model: Model, sde: SDE, x_a: Array, x_b: Array, num_points: int = 9, *,
                interpolant: str = "slerp", rtol: float = 1e-5, atol: float = 1e-5,
                solver: str = "tsit5", eps: float | None = None) -> tuple[Array, dict]:
  """Decoded interpolation path from x_a to x_b (both [B, ...]): [num_points, B, ...].

  Both ends are encoded with the probability-flow ODE, the latents interpolated with
  ``interpolant`` ('slerp' or 'lerp') at α = linspace(0, 1, num_points), and every point decoded,
  with ``ode.encode``/``decode`` (diffrax ``solver``, per-sample step control; eps None:
  ``sde.default_eps``). ``model`` is a score function or a ``Denoiser``. info holds the latents
  'z' [num_points, B, ...], 'alpha' and 'nfe' (encoding plus decoding).
  """
  if x_a.shape != x_b.shape:
    raise ValueError(f"x_a and x_b must have the same shape; got {x_a.shape} and {x_b.shape}.")
  if interpolant not in INTERPOLANTS:
    raise ValueError(f"Unknown interpolant {interpolant!r}; valid choices are {sorted(INTERPOLANTS)}.")
  if num_points < 2:
    raise ValueError(f"num_points must be >= 2; got {num_points}.")
  kw = dict(rtol=rtol, atol=atol, solver=solver, eps=eps)
  z, encode_info = ode.encode(model, sde, jnp.concatenate([x_a, x_b]), **kw)
  z_a, z_b = z[: x_a.shape[0]], z[x_a.shape[0]:]
  alpha = jnp.linspace(0.0, 1.0, num_points, dtype=z.dtype)
  z_path = INTERPOLANTS[interpolant](z_a, z_b, alpha)  # [K, B, ...]
  x_path, decode_info = ode.decode(model, sde, z_path.reshape((-1,) + x_a.shape[1:]), **kw)
  return x_path.reshape(z_path.shape), {"z": z_path, "alpha": alpha, "nfe": encode_info["nfe"] + decode_info["nfe"]}
