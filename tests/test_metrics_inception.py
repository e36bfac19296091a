"""The FID Inception-v3: TF-specific pooling, resize convention, block math, and a full 299x299 forward."""
import jax
import numpy as np
import pytest

from score_sde.metrics import features, fid, inception
from score_sde.metrics.convert_inception import InceptionWeights


def _np_pool_same(x, reduce):
  """3x3 stride-1 pooling over the valid (unpadded) neighbours of each pixel: [B, H, W, C]."""
  b, h, w, c = x.shape
  out = np.empty_like(x)
  for i in range(h):
    for j in range(w):
      out[:, i, j] = reduce(x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].reshape(b, -1, c), axis=1)
  return out


def _np_conv_bn_relu(x, kernel_oihw, padding, scale, bias, mean, var):
  """torch Conv2d (cross-correlation, OIHW, stride 1) -> eval-mode BatchNorm (eps 1e-3) -> ReLU."""
  (ph, pw) = padding
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  o, i, kh, kw = kernel_oihw.shape
  h_out, w_out = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  y = np.zeros((x.shape[0], h_out, w_out, o))
  for di in range(kh):
    for dj in range(kw):
      y += xp[:, di:di + h_out, dj:dj + w_out, :] @ kernel_oihw[:, :, di, dj].T
  return np.maximum((y - mean) / np.sqrt(var + 1e-3) * scale + bias, 0.0)


def _np_resize_bilinear_halfpixel(x, size):
  """torch F.interpolate(mode='bilinear', align_corners=False) along H and W of [B, H, W, C]."""
  def axis_weights(n_in):
    src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((size, n_in))
    m[np.arange(size), i0] += 1 - lam
    m[np.arange(size), i1] += lam
    return m
  mh, mw = axis_weights(x.shape[1]), axis_weights(x.shape[2])
  rows = np.einsum("ph,bhwc->bpwc", mh, x)  # separable: one axis at a time
  return np.einsum("qw,bpwc->bpqc", mw, rows)


def test_pools_follow_tensorflow_same_semantics():
  x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32)
  np.testing.assert_allclose(inception._avg_pool_same(x), _np_pool_same(x, np.mean), rtol=1e-5, atol=1e-6)
  # Corner of an all-negative input: padding must be -inf for the max pool, ignored for the average.
  neg = -1.0 - np.abs(x)
  np.testing.assert_allclose(inception._max_pool_same(neg), _np_pool_same(neg, np.max), rtol=1e-6)
  assert np.all(np.asarray(inception._max_pool_same(neg)) < 0)


def test_resize_matches_torch_bilinear_convention():
  x = np.random.default_rng(1).uniform(size=(1, 32, 20, 3)).astype(np.float32)
  got = np.asarray(inception.resize_to_inception(x))
  assert got.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(got, _np_resize_bilinear_halfpixel(x, 299), atol=2e-6)
  down = np.random.default_rng(2).uniform(size=(1, 512, 400, 3)).astype(np.float32)
  # Downsampling too: no antialiasing, like torch's default (and unlike jax.image.resize's default).
  # float32 source coordinates near 500 px are off by up to ~3e-5 px, so values differ by up to ~3e-5.
  np.testing.assert_allclose(np.asarray(inception.resize_to_inception(down)),
                             _np_resize_bilinear_halfpixel(down, 299), atol=6e-5)


def test_conv_bn_matches_torch_semantics_for_asymmetric_kernel():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 6, 7, 4)).astype(np.float32)
  w = rng.normal(size=(5, 4, 1, 3)).astype(np.float32)  # OIHW, a 1x3 kernel with padding (0, 1)
  scale, bias, mean = (rng.normal(size=5).astype(np.float32) for _ in range(3))
  var = rng.uniform(0.5, 2.0, 5).astype(np.float32)
  variables = {"params": {"conv": {"kernel": w.transpose(2, 3, 1, 0)}, "bn": {"scale": scale, "bias": bias}},
               "batch_stats": {"bn": {"mean": mean, "var": var}}}
  got = inception.ConvBN(5, (1, 3), padding=(0, 1)).apply(variables, x)
  np.testing.assert_allclose(got, _np_conv_bn_relu(x, w, (0, 1), scale, bias, mean, var), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def random_weights():
  return InceptionWeights(variables=inception.random_variables(seed=0), sha256="random-init-seed-0", source="test")


@pytest.mark.parametrize("block, channels, reduce", [("Mixed_7b", 1280, np.mean), ("Mixed_7c", 2048, np.max)])
def test_last_blocks_pool_branch(random_weights, block, channels, reduce):
  # Mixed_7b's pooled branch averages over valid pixels; Mixed_7c's uses a max pool (2015 graph quirk).
  variables = {name: tree[block] for name, tree in random_weights.variables.items()}
  x = np.random.default_rng(4).normal(size=(1, 4, 4, channels)).astype(np.float32)
  out = inception.InceptionE(max_pool_branch=block == "Mixed_7c").apply(variables, x)
  assert out.shape == (1, 4, 4, 2048)
  p, s = variables["params"]["branch_pool"], variables["batch_stats"]["branch_pool"]
  kernel_oihw = np.asarray(p["conv"]["kernel"]).transpose(3, 2, 0, 1)
  expected = _np_conv_bn_relu(_np_pool_same(x, reduce), kernel_oihw, (0, 0), p["bn"]["scale"], p["bn"]["bias"],
                              s["bn"]["mean"], s["bn"]["var"])
  np.testing.assert_allclose(out[..., -192:], expected, rtol=2e-4, atol=2e-4)


def test_variable_and_output_shapes():
  shapes = inception.variable_shapes()
  assert shapes["params"]["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)
  assert shapes["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
  assert shapes["params"]["fc"]["kernel"].shape == (2048, 1008)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert n_params == 23_850_960
  out = jax.eval_shape(inception.InceptionV3FID().apply, shapes, jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32))
  assert out["pool_3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)


@pytest.mark.slow
def test_full_forward_features_and_stats(random_weights):
  rng = np.random.default_rng(5)
  images_u8 = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  images = images_u8.astype(np.float32) / 255.0
  feats = features.features_from_images(images, random_weights, batch_size=2)  # a full batch, a padded one
  assert feats.pool_3.shape == (3, 2048) and feats.logits.shape == (3, 1008)
  assert np.all(np.isfinite(feats.pool_3)) and np.all(feats.pool_3 >= 0)  # mean of ReLU outputs
  assert np.std(feats.pool_3) > 1e-3 and np.abs(feats.pool_3[0] - feats.pool_3[1]).max() > 1e-3
  fc = random_weights.variables["params"]["fc"]
  np.testing.assert_allclose(feats.logits, feats.pool_3 @ np.asarray(fc["kernel"], np.float64) + fc["bias"],
                             rtol=1e-4, atol=1e-3)
  # Same images as uint8, in another order and batch grouping: identical features per image.
  again = features.features_from_images(images_u8[[2, 0]], random_weights, batch_size=2)
  np.testing.assert_allclose(again.pool_3, feats.pool_3[[2, 0]], rtol=1e-5, atol=1e-5)
  # Statistics stream through the same path; an iterator of batches is accepted.
  stats = features.compute_dataset_stats(iter([images[:1], images[1:2]]), random_weights, batch_size=2)
  direct = fid.stats_from_features(feats.pool_3[:2])
  np.testing.assert_allclose(stats.mu, direct.mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.sigma, direct.sigma, rtol=1e-4, atol=1e-6)
  assert (stats.num_images, stats.weights_sha256, stats.resize_mode) == (2, "random-init-seed-0", inception.RESIZE_MODE)


def test_bad_images_are_rejected():
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    features.to_unit_float(np.full((1, 4, 4, 3), -1.0, np.float32))
  with pytest.raises(ValueError, match="NHWC"):
    features.to_unit_float(np.zeros((4, 4, 3), np.float32))
  gray = features.to_unit_float(np.full((1, 4, 4, 1), 255, np.uint8))
  assert gray.shape == (1, 4, 4, 3) and np.all(gray == 1.0)
