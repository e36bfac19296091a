"""Convolution whose weight gradient is summed over batch chunks on a single CPU device.

XLA:CPU computes a convolution's weight gradient, dL/dW = sum over (n, h, w) of input patches
times output gradients, as one convolution that reduces over the whole batch; at batch 64 it runs
at a third of the forward convolution's rate (31 vs 90-140 GFLOP/s for 3x3 convolutions at 16-64
channels on the 2-core dev machine), while the same reduction over 8 examples at a time, summed,
runs 2-3x faster (docs/performance.md, "The backward convolution at batch 64").
``conv_general_dilated`` is ``lax.conv_general_dilated`` with a JVP rule that writes the weight's
tangent term as one convolution per chunk of ``CHUNK`` examples, so reverse mode (the transpose of
that term) sums per-chunk weight gradients. The value, the input's gradient and forward-mode
derivatives (likelihood divergence probes) are those of ``lax.conv_general_dilated``; only the
order of the weight gradient's float32 sum changes.

Chunking applies only where it was measured to help: the CPU backend with one device in the
process, from 16 examples up. A batch sharded over several devices is left to XLA (slicing it into
chunks would move data between devices), and GPU/TPU were not measured.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

CHUNK = 8  # examples per weight-gradient chunk: of 4, 8, 16 and 32, the fastest in most shapes tried


def _chunked(batch: int) -> bool:
  return (batch >= 2 * CHUNK and jax.default_backend() == "cpu" and jax.device_count() == 1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(lhs, rhs, options: tuple):
  return lax.conv_general_dilated(lhs, rhs, **dict(options))


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(options, primals, tangents):
  lhs, rhs = primals
  d_lhs, d_rhs = tangents
  kwargs = dict(options)
  out = lax.conv_general_dilated(lhs, rhs, **kwargs)
  d_out = jnp.zeros_like(out)
  if not isinstance(d_lhs, SymbolicZero):
    d_out = d_out + lax.conv_general_dilated(d_lhs, rhs, **kwargs)
  if not isinstance(d_rhs, SymbolicZero):
    lhs_spec, _, out_spec = lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, kwargs["dimension_numbers"])
    n, axis = lhs.shape[lhs_spec[0]], lhs_spec[0]
    # One convolution per chunk: transposed (reverse mode), the chunks' weight gradients add up.
    parts = [lax.conv_general_dilated(lax.slice_in_dim(lhs, i, min(i + CHUNK, n), axis=axis),
                                      d_rhs, **kwargs) for i in range(0, n, CHUNK)]
    d_out = d_out + jnp.concatenate(parts, axis=out_spec[0])
  return out, d_out


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated``, with the weight gradient chunked over the batch on one CPU."""
  options = dict(window_strides=tuple(window_strides),
                 padding=padding if isinstance(padding, str) else tuple(map(tuple, padding)),
                 lhs_dilation=None if lhs_dilation is None else tuple(lhs_dilation),
                 rhs_dilation=None if rhs_dilation is None else tuple(rhs_dilation),
                 dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                 batch_group_count=batch_group_count, precision=precision,
                 preferred_element_type=preferred_element_type)
  batch_axis = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers).lhs_spec[0]
  if batch_group_count != 1 or not _chunked(lhs.shape[batch_axis]):
    return lax.conv_general_dilated(lhs, rhs, **options)
  return _conv(lhs, rhs, tuple(options.items()))


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
"""``flax.linen.Conv`` through ``conv_general_dilated``: same parameters, same names."""
