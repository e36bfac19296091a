"""Helpers shared by every sampler of this package: model conversion, per-sample randomness, shapes.

The sampler protocol (``SAMPLERS`` in ``__init__.py``) is
``sample(key, model, sde, shape, **options) -> (x, info)``, with ``model`` a score function
``score_fn(x_t [B, ...], t [B])`` or a ``parametrization.Denoiser``. ``as_model`` checks it once at
the sampler's entry and makes it a pytree for ``jax.jit``; inside the compiled loop the sampler
reads it only through ``parametrization.as_score_fn`` / ``data_prediction`` / ``as_denoiser``, so a
denoiser's output can never be taken for a score.

Compilation. ``as_model`` keeps pytree callables (``jax.tree_util.Partial(net_score, params)``,
flax struct dataclasses such as the guided scores of ``guidance.py``) as traced arguments, so new
``params`` values of the same shapes do not recompile; any other callable (e.g. a closure over
params) becomes a static argument keyed by its identity.

Randomness (Song et al. 2021 leave it to the implementation; we follow NVlabs/edm's per-sample
generators): sample b draws its noise from ``sample_keys(key, B)[b] = fold_in(key, b)`` alone, its
prior from fold_in(key_b, 0), so its result does not depend on the batch size.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from score_sde.diffusion.parametrization import Denoiser, Model
from score_sde.diffusion.sde import SDE

Array = jax.Array


def default_dtype():
  """float64 under jax_enable_x64, else float32."""
  return jnp.zeros(()).dtype


def as_traceable(fn: Callable) -> Callable:
  """``fn`` as a pytree that ``jax.jit`` accepts as an argument.

  Pytree callables (``Partial``, flax structs with ``__call__``) pass through, their leaves traced;
  a plain callable becomes ``Partial(fn)``, static and compared by identity.
  """
  if not callable(fn):
    raise TypeError(f"expected a callable such as score_fn(x [B, ...], t [B]); got {type(fn)}.")
  leaves = jax.tree_util.tree_leaves(fn)
  if len(leaves) == 1 and leaves[0] is fn:  # an unregistered object: a pytree leaf
    return Partial(fn)
  return fn


def as_model(model: Model) -> Model:
  """The sampler's ``model`` (score function or ``Denoiser``) checked and made jit-traceable."""
  if isinstance(model, Denoiser):
    return Denoiser(fn=as_traceable(model.fn))
  if not callable(model):
    raise TypeError(f"model must be a callable score_fn(x [B, ...], t [B]) or a "
                    f"parametrization.Denoiser; got {type(model)}.")
  return as_traceable(model)


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
  """``shape`` as (batch, *sample_shape) of Python ints."""
  shape = tuple(int(s) for s in shape)
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"shape must be (batch, *sample_shape) with positive sizes, e.g. "
                     f"(64, 32, 32, 3); got {shape}.")
  return shape


def resolve_eps(sde: SDE, eps: float | None) -> float:
  """The smallest time of sampling: ``eps``, or the SDE's ``default_eps`` when None; it must lie in
  (0, T] (checked when it is a concrete number)."""
  eps = sde.default_eps if eps is None else eps
  if not isinstance(eps, jax.core.Tracer) and not 0.0 < float(eps) <= sde.T:
    raise ValueError(f"eps must be in (0, T = {sde.T}]: the smallest time the solve reaches; got "
                     f"{eps}. The reference uses 1e-5 for VE and 1e-3 for VP / sub-VP.")
  return eps


def batch_mask(mask: Array, x: Array) -> Array:
  """A per-sample boolean mask [B] shaped to broadcast against x [B, ...]."""
  return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


def check_tolerances(rtol, atol) -> None:
  """Adaptive solvers need rtol, atol >= 0 (not both 0); checked when concrete."""
  values = {"rtol": rtol, "atol": atol}
  if any(isinstance(v, jax.core.Tracer) for v in values.values()):
    return
  for name, value in values.items():
    if not float(value) >= 0.0:
      raise ValueError(f"{name} must be >= 0; got {value}.")
  if float(rtol) == 0.0 and float(atol) == 0.0:
    raise ValueError("rtol and atol are both 0: the adaptive solver could never accept a step.")


def host_int(count) -> int:
  """An evaluation count as a Python int, read on the host after the compiled call.

  When the sampler itself runs inside the caller's ``jax.jit``, an adaptive solver's count is only
  known at run time and stays a traced int32 scalar.
  """
  if isinstance(count, jax.core.Tracer):
    return count
  return int(count)


# --- per-sample randomness --------------------------------------------------------------------

def sample_keys(key: Array, batch_size: int) -> Array:
  """Per-sample keys [B]: key b = fold_in(key, b), independent of the batch size."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size))


def fold_in_all(keys: Array, data) -> Array:
  """fold_in(key_b, data) for every per-sample key [B]."""
  return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


def per_sample_normal(keys: Array, shape: Sequence[int], dtype) -> Array:
  """Standard normal noise [B, ...] of ``shape``, row b drawn from ``keys[b]`` alone."""
  return jax.vmap(lambda k: jax.random.normal(k, tuple(shape[1:]), dtype))(keys)


def prior_sample(keys: Array, sde: SDE, shape: Sequence[int], dtype) -> Array:
  """x_T ~ prior [B, ...], row b from fold_in(keys[b], 0); samplers draw step i's noise from
  fold_in(keys[b], i + 1)."""
  draw = lambda k: sde.prior_sampling(jax.random.fold_in(k, 0), tuple(shape[1:])).astype(dtype)
  return jax.vmap(draw)(keys)


# --- per-sample solvers -----------------------------------------------------------------------

def per_sample_axes(fn: Callable):
  """``vmap`` in_axes for a callable pytree: 0 for leaves with one entry per sample, else None.

  A callable that carries per-sample state (the class labels of a guided score) declares it with a
  ``per_sample_axes()`` method; any other callable is shared by all samples.
  """
  if hasattr(fn, "per_sample_axes"):
    return fn.per_sample_axes()
  return jax.tree.map(lambda _: None, fn)


def vmap_over_samples(fn: Callable, model: Model, *batched):
  """``jax.vmap`` of ``fn(model_b, *args_b)`` over the batch, for per-sample adaptive solvers.

  fn calls ``model`` on batches of ONE sample, so the per-sample leaves of ``model`` (see
  ``per_sample_axes``) are sliced to sample b and given a batch axis of size 1.
  """
  axes = per_sample_axes(model)

  def one(model_b, *args):
    model_b = jax.tree.map(lambda a, v: v if a is None else v[None], axes, model_b,
                           is_leaf=lambda a: a is None)
    return fn(model_b, *args)

  return jax.vmap(one, in_axes=(axes,) + (0,) * len(batched))(model, *batched)
