"""FIR resampling vs. a direct NumPy reference: zero-insert, pad, 2-D filter, decimate (+ conv)."""
import jax
import numpy as np
import pytest

from score_sde.models import up_or_down_sampling as fir


@pytest.fixture(autouse=True)
def x64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def np_upfirdn2d(x, k2d, up, down, pad0, pad1):
  """Literal upfirdn: zero-insert (trailing zeros), pad/crop, true 2-D convolution, decimate."""
  b, h, w, c = x.shape
  z = np.zeros((b, h * up, w * up, c))
  z[:, ::up, ::up] = x
  z = np.pad(z, ((0, 0), (max(pad0, 0), max(pad1, 0)), (max(pad0, 0), max(pad1, 0)), (0, 0)))
  z = z[:, max(-pad0, 0):z.shape[1] - max(-pad1, 0), max(-pad0, 0):z.shape[2] - max(-pad1, 0)]
  kh = k2d.shape[0]
  oh, ow = z.shape[1] - kh + 1, z.shape[2] - kh + 1
  out = np.zeros((b, oh, ow, c))
  for i in range(kh):  # convolution: out[y] = sum_i k[i] z[y + kh - 1 - i]
    for j in range(kh):
      out += k2d[i, j] * z[:, kh - 1 - i:kh - 1 - i + oh, kh - 1 - j:kh - 1 - j + ow]
  return out[:, ::down, ::down]


def np_correlate(x, w, stride=1):
  """VALID cross-correlation, x [B,H,W,I], w [K,K,I,O]."""
  kk = w.shape[0]
  oh, ow = x.shape[1] - kk + 1, x.shape[2] - kk + 1
  out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
  for i in range(kk):
    for j in range(kk):
      out += np.einsum("bhwi,io->bhwo", x[:, i:i + oh, j:j + ow], w[i, j])
  return out[:, ::stride, ::stride]


def np_kernel(k, gain):
  k = np.asarray(k, np.float64)
  k = np.outer(k, k) if k.ndim == 1 else k
  return k / k.sum() * gain


# (factor, taps): the taps are at least `factor` long, as upfirdn-based resampling requires.
RESAMPLING = [(2, [1, 1]), (2, [1, 3, 3, 1]), (2, [1, 2, 1]), (2, [2, 5, 1, 3]),  # asymmetric
              (3, [1, 1, 1]), (3, [1, 4, 6, 4, 1])]


@pytest.mark.parametrize("k", [[1, 3, 3, 1], [1, 2, 1], [2, 5, 1, 3], [[1, 2], [3, 7]],
                               [[1, 0, 2], [0, 3, 1], [4, 1, 1]]])
@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (3, 1, (3, 0)),
                                         (1, 3, (2, 2)), (2, 3, (1, 2)), (2, 1, (-1, 2)),
                                         (1, 2, (-1, 0))])
def test_upfirdn2d_matches_numpy(k, up, down, pad):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 7, 3))
  k = np.asarray(k, np.float64)
  k2d = np.outer(k, k) if k.ndim == 1 else k
  got = np.asarray(fir.upfirdn2d(x, k, up=up, down=down, pad=pad))
  want = np_upfirdn2d(x, k2d, up, down, *pad)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("factor,k", RESAMPLING)
def test_upsample_downsample_2d(factor, k):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 6, 2))
  k2 = np_kernel(k, factor ** 2)
  p = k2.shape[0] - factor
  up = np.asarray(fir.upsample_2d(x, k, factor=factor))
  np.testing.assert_allclose(up, np_upfirdn2d(x, k2, factor, 1, (p + 1) // 2 + factor - 1, p // 2),
                             rtol=1e-12, atol=1e-12)
  assert up.shape == (2, 6 * factor, 6 * factor, 2)
  k1 = np_kernel(k, 1.0)
  down = np.asarray(fir.downsample_2d(x, k, factor=factor))
  np.testing.assert_allclose(down, np_upfirdn2d(x, k1, 1, factor, (p + 1) // 2, p // 2),
                             rtol=1e-12, atol=1e-12)
  assert down.shape == (2, 6 // factor, 6 // factor, 2)


@pytest.mark.parametrize("factor,k", RESAMPLING)
@pytest.mark.parametrize("ksize", [1, 3, 5])
def test_fused_conv_resampling(factor, k, ksize):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 6, 6, 3))
  w = rng.normal(size=(ksize, ksize, 3, 4))
  # Upsample + conv: full stride-f transposed convolution (correlate the zero-dilated input,
  # padded by K-1, with w), then the FIR filter with the padding that yields H*f outputs.
  k_up = np_kernel(k, factor ** 2)
  dil = np.zeros((2, 5 * factor + 1, 5 * factor + 1, 3))
  dil[:, ::factor, ::factor] = x
  dil = np.pad(dil, ((0, 0), (ksize - 1,) * 2, (ksize - 1,) * 2, (0, 0)))
  p = (k_up.shape[0] - factor) - (ksize - 1)
  want = np_upfirdn2d(np_correlate(dil, w), k_up, 1, 1, (p + 1) // 2 + factor - 1, p // 2 + 1)
  if factor == 2:
    got = np.asarray(fir.upsample_conv_2d(x, w, k, factor=factor))
    assert got.shape == (2, 6 * factor, 6 * factor, 4) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
  else:  # StyleGAN2's single-padding formula only yields H*f outputs for f == 2
    with pytest.raises(ValueError, match="factor 2"):
      fir.upsample_conv_2d(x, w, k, factor=factor)
  # Conv + downsample: pad once, FIR filter, strided VALID correlation.
  k_dn = np_kernel(k, 1.0)
  p = (k_dn.shape[0] - factor) + (ksize - 1)
  want = np_correlate(np_upfirdn2d(x, k_dn, 1, 1, (p + 1) // 2, p // 2), w, stride=factor)
  got = np.asarray(fir.conv_downsample_2d(x, w, k, factor=factor))
  assert got.shape == (2, 6 // factor, 6 // factor, 4) == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


def test_default_kernels_are_nearest_and_average_pool():
  x = np.random.default_rng(3).normal(size=(1, 4, 4, 2))
  np.testing.assert_allclose(fir.upsample_2d(x), fir.naive_upsample_2d(x), atol=1e-12)
  np.testing.assert_allclose(fir.upsample_2d(x), np.repeat(np.repeat(x, 2, 1), 2, 2), atol=1e-12)
  np.testing.assert_allclose(fir.downsample_2d(x), fir.naive_downsample_2d(x), atol=1e-12)
  np.testing.assert_allclose(fir.naive_downsample_2d(x),
                             x.reshape(1, 2, 2, 2, 2, 2).mean(axis=(2, 4)), atol=1e-12)


def test_constant_image_keeps_its_value_away_from_borders():
  x = np.full((1, 8, 8, 1), 3.0)
  up = np.asarray(fir.upsample_2d(x, [1, 3, 3, 1]))
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 3.0, rtol=1e-12)
  down = np.asarray(fir.downsample_2d(x, [1, 3, 3, 1]))
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 3.0, rtol=1e-12)


def test_gradients_match_numpy_adjoint():
  """The upsample is linear: its VJP must be the adjoint, <U x, y> = <x, U^T y>."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(1, 5, 5, 2))
  y = rng.normal(size=(1, 10, 10, 2))
  _, vjp = jax.vjp(lambda a: fir.upsample_2d(a, [1, 3, 3, 1]), x)
  (xt,) = vjp(y)
  lhs = np.sum(np_upfirdn2d(x, np_kernel([1, 3, 3, 1], 4), 2, 1, 2, 1) * y)
  np.testing.assert_allclose(lhs, np.sum(np.asarray(xt) * x), rtol=1e-12)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="upfirdn2d expects"):
    fir.upfirdn2d(np.zeros((4, 4, 1)), [1, 1])
  with pytest.raises(ValueError, match="positive integers"):
    fir.upfirdn2d(np.zeros((1, 4, 4, 1)), [1, 1], up=0)
  with pytest.raises(ValueError, match="sum to zero"):
    fir.upsample_2d(np.zeros((1, 4, 4, 1)), [1, -1])
  with pytest.raises(ValueError, match="odd and square"):
    fir.upsample_conv_2d(np.zeros((1, 4, 4, 1)), np.zeros((2, 2, 1, 1)))
