"""FIR up/down-sampling of NHWC images (upfirdn2d, StyleGAN2: Karras et al., 2020, Appendix B).

`upfirdn2d` zero-inserts (`up`), pads, convolves with a FIR filter and decimates (`down`), the
semantics of `scipy.signal.upfirdn` per spatial axis. The implementation never materialises the
zero-inserted image nor computes the discarded outputs:

* separable (1-D) filters run one axis at a time as a polyphase filter: every output phase is a sum
  of a few shifted (and, when decimating, strided) slices of the input, which XLA fuses into one
  elementwise pass;
* the fused `upsample_conv_2d` runs the stride-`factor` transposed convolution as one stride-1
  convolution of the low-resolution input with the `factor**2` polyphase sub-kernels stacked on the
  output-channel axis, followed by a depth-to-space shuffle;
* the fused `conv_downsample_2d` filters at full resolution (cheap, per channel) and lets the
  strided convolution do the decimation, so no discarded output is computed.

Filters given as 1-D taps `k` mean the separable 2-D filter outer(k, k), normalised to unit sum and
multiplied by `gain` (times `factor**2` when upsampling, so that a constant image keeps its value).
"""
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.models.conv import conv_general_dilated


def setup_kernel(k, factor: int = 1, gain: float = 1.0) -> np.ndarray:
  """Normalised 1-D (separable) or 2-D FIR filter: unit sum times `gain * factor**2`."""
  k = np.asarray(k, dtype=np.float64)
  if k.ndim not in (1, 2) or k.size == 0:
    raise ValueError(f"FIR kernel must be a non-empty 1-D or 2-D array, got shape {k.shape}.")
  if k.ndim == 2 and k.shape[0] != k.shape[1]:
    raise ValueError(f"2-D FIR kernel must be square, got shape {k.shape}.")
  total = k.sum() ** 2 if k.ndim == 1 else k.sum()
  if total == 0:
    raise ValueError("FIR kernel taps sum to zero; cannot normalise it.")
  scale = np.sqrt(gain * factor ** 2 / total) if k.ndim == 1 else gain * factor ** 2 / total
  return k * scale


def _upfirdn_1d(x, taps: np.ndarray, axis: int, up: int, down: int, pad0: int, pad1: int):
  """upfirdn along one axis of `x` with 1-D filter `taps`, polyphase (no zero insertion).

  Output y[j] = sum_t taps[t] z[j*down + K - 1 - t], z = pad(zero_insert(x, up), pad0, pad1),
  i.e. a true convolution with `taps` keeping only outputs whose footprint lies inside z.
  """
  n_in = x.shape[axis]
  n_taps = len(taps)
  n_full = n_in * up + pad0 + pad1 - n_taps + 1  # outputs before decimation
  if n_full <= 0:
    raise ValueError(f"upfirdn: padded length {n_in * up + pad0 + pad1} is shorter than the "
                     f"{n_taps}-tap filter.")
  n_out = -(-n_full // down)
  flipped = taps[::-1]  # correlation taps
  # z[m] = x[(m - pad0) / up] when (m - pad0) is a multiple of `up`, else 0.
  # Output j = up*q + r (before decimation) reads x[q + (r + t - pad0) / up] for taps t of phase r.
  phases = []
  for r in range(up):
    n_phase = len(range(r, n_full, up))
    terms = [(t, (r + t - pad0) // up) for t in range(n_taps) if (r + t - pad0) % up == 0]
    phases.append((n_phase, terms))
  offsets = [o for _, terms in phases for _, o in terms]
  lo = max(0, -min(offsets))
  hi = max(0, max(n + o for n, terms in phases for _, o in terms) - n_in)
  if down > 1 and up == 1:
    hi = max(0, max((n_out - 1) * down + o + 1 for _, o in phases[0][1]) - n_in)
  pad_width = [(0, 0)] * x.ndim
  pad_width[axis] = (lo, hi)
  xp = jnp.pad(x, pad_width)

  def window(start, count, stride):
    return jax.lax.slice_in_dim(xp, start + lo, start + lo + (count - 1) * stride + 1, stride, axis)

  if up == 1:  # plain (possibly strided) FIR: fused filter + decimation
    _, terms = phases[0]
    return sum(float(flipped[t]) * window(o, n_out, down) for t, o in terms)
  outs = [sum(float(flipped[t]) * window(o, n_phase, 1) for t, o in terms) if terms
          else jnp.zeros(x.shape[:axis] + (n_phase,) + x.shape[axis + 1:], x.dtype)
          for n_phase, terms in phases]
  # Interleave the phases: out[up*q + r] = outs[r][q].
  n_q = outs[0].shape[axis]
  outs = [jnp.pad(o, [(0, 0)] * axis + [(0, n_q - o.shape[axis])] + [(0, 0)] * (x.ndim - axis - 1))
          for o in outs]
  y = jnp.stack(outs, axis=axis + 1)
  y = y.reshape(x.shape[:axis] + (n_q * up,) + x.shape[axis + 1:])
  y = jax.lax.slice_in_dim(y, 0, n_full, 1, axis)
  return y if down == 1 else jax.lax.slice_in_dim(y, 0, n_full, down, axis)


def upfirdn2d(x, k, up: int = 1, down: int = 1, pad: Tuple[int, int] = (0, 0)):
  """Zero-insert by `up`, pad by `pad` (negative crops), FIR-filter with `k`, decimate by `down`.

  Args:
    x: images, [B, H, W, C].
    k: FIR taps, used as given (no normalisation): 1-D means the separable filter outer(k, k).
    up, down: integer factors, the same for both spatial axes.
    pad: (before, after) padding of the zero-inserted image, the same for both axes.
  Returns:
    [B, H', W', C] with H' = ceil((H*up + pad0 + pad1 - K + 1) / down).
  """
  if x.ndim != 4:
    raise ValueError(f"upfirdn2d expects [B, H, W, C] images, got shape {x.shape}.")
  if not (isinstance(up, int) and isinstance(down, int) and up >= 1 and down >= 1):
    raise ValueError(f"up and down must be positive integers, got up={up}, down={down}.")
  k = np.asarray(k, dtype=np.float64)
  pad0, pad1 = int(pad[0]), int(pad[1])
  if k.ndim == 1:
    for axis in (1, 2):
      x = _upfirdn_1d(x, k, axis, up, down, pad0, pad1)
    return x
  if k.ndim != 2:
    raise ValueError(f"FIR kernel must be 1-D or 2-D, got shape {k.shape}.")
  # Non-separable filter: one depthwise convolution; lhs dilation inserts the zeros implicitly.
  c = x.shape[-1]
  w = jnp.asarray(np.tile(k[::-1, ::-1, None, None], (1, 1, 1, c)), x.dtype)  # [K, K, 1, C]
  crop = [max(-pad0, 0), max(-pad1, 0)]
  xp = x
  if up == 1 and any(crop):
    xp = x[:, crop[0]:x.shape[1] - crop[1], crop[0]:x.shape[2] - crop[1]]
    pad0, pad1 = max(pad0, 0), max(pad1, 0)
  # lax padding acts on the dilated input; trailing zeros of the zero-insertion are up - 1 extra.
  spatial_pad = ((pad0, pad1 + up - 1),) * 2
  return jax.lax.conv_general_dilated(
      xp, w, window_strides=(down, down), padding=spatial_pad, lhs_dilation=(up, up),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upsample_2d(x, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1.0):
  """FIR upsampling, [B, H, W, C] -> [B, H*factor, W*factor, C]; default k is nearest neighbour."""
  k = setup_kernel([1] * factor if k is None else k, factor, gain)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1.0):
  """FIR downsampling, [B, H, W, C] -> [B, H//factor, W//factor, C]; default k is average pooling."""
  k = setup_kernel([1] * factor if k is None else k, 1, gain)
  p = k.shape[0] - factor
  return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def _polyphase_transposed_conv(x, w, factor: int):
  """Full stride-`factor` transposed convolution by polyphase sub-kernels.

  Computes o[n] = sum_s w[s] u[n + s - (K - 1)] per axis, u the zero-inserted x (no trailing
  zeros), i.e. the full correlation of u with w, of length (H - 1)*factor + K.
  Output n = factor*q + r reads x[q + (r + s - K + 1) / factor] for the taps s of phase r.
  """
  kh, kw, c_in, c_out = w.shape
  assert kh == kw
  ksize = kh
  taps = {r: [(s, (r + s - ksize + 1) // factor) for s in range(ksize)
              if (r + s - ksize + 1) % factor == 0] for r in range(factor)}
  lo = -min(o for r in taps for _, o in taps[r])
  span = max(o for r in taps for _, o in taps[r]) + lo + 1
  # Sub-kernel of phase (ry, rx) at relative offset (oy + lo, ox + lo).
  sub = np.zeros((span, span, factor, factor, ksize, ksize), np.float32)
  for ry in range(factor):
    for sy, oy in taps[ry]:
      for rx in range(factor):
        for sx, ox in taps[rx]:
          sub[oy + lo, ox + lo, ry, rx, sy, sx] = 1.0
  w_sub = jnp.einsum("abyxst,stio->abioyx", jnp.asarray(sub, w.dtype), w)
  w_sub = w_sub.reshape(span, span, c_in, c_out * factor * factor)
  h_in = x.shape[1]
  n_q = -(-((h_in - 1) * factor + ksize) // factor)
  y = conv_general_dilated(
      x, w_sub, window_strides=(1, 1),
      padding=((lo, n_q + span - 1 - lo - h_in),) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))  # [B, Q, Q, C_out*f*f]
  b = x.shape[0]
  y = y.reshape(b, n_q, n_q, c_out, factor, factor).transpose(0, 1, 4, 2, 5, 3)
  y = y.reshape(b, n_q * factor, n_q * factor, c_out)
  n_full = (h_in - 1) * factor + ksize
  return y[:, :n_full, :n_full]


def upsample_conv_2d(x, w, k: Optional[Sequence[float]] = None, factor: int = 2,
                     gain: float = 1.0):
  """Fused FIR upsampling and convolution (StyleGAN2 `upsample_conv_2d`).

  Equals the full stride-`factor` transposed convolution of x with w (HWIO, odd square), then
  upfirdn2d with the normalised filter, padded once so that the output is [B, H*f, W*f, C_out].
  """
  if w.shape[0] != w.shape[1] or w.shape[0] % 2 != 1:
    raise ValueError(f"conv weight must be odd and square (HWIO), got shape {w.shape}.")
  if factor != 2:
    raise ValueError(f"upsample_conv_2d supports factor 2 only (its single padding step gives "
                     f"H*factor outputs only then), got factor={factor}; use upsample_2d "
                     f"followed by a convolution instead.")
  k = setup_kernel([1] * factor if k is None else k, factor, gain)
  p = (k.shape[0] - factor) - (w.shape[0] - 1)
  y = _polyphase_transposed_conv(x, w, factor)
  return upfirdn2d(y, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k: Optional[Sequence[float]] = None, factor: int = 2,
                       gain: float = 1.0):
  """Fused convolution and FIR downsampling (StyleGAN2 `conv_downsample_2d`).

  Pads once, FIR-filters at full resolution, then a stride-`factor` VALID convolution with w
  (HWIO) does the decimation: [B, H, W, C_in] -> [B, H/f, W/f, C_out].
  """
  if w.shape[0] != w.shape[1] or w.shape[0] % 2 != 1:
    raise ValueError(f"conv weight must be odd and square (HWIO), got shape {w.shape}.")
  k = setup_kernel([1] * factor if k is None else k, 1, gain)
  p = (k.shape[0] - factor) + (w.shape[0] - 1)
  x = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
  return conv_general_dilated(
      x, w.astype(x.dtype), window_strides=(factor, factor), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def naive_upsample_2d(x, factor: int = 2):
  """Nearest-neighbour upsampling, [B, H, W, C] -> [B, H*f, W*f, C]."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
  return x.reshape(b, h * factor, w * factor, c)


def naive_downsample_2d(x, factor: int = 2):
  """Average pooling over factor x factor blocks, [B, H, W, C] -> [B, H/f, W/f, C]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
