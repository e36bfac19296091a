"""Tests for the NCSN / NCSNv2 RefineNet score models (score_sde.models.ncsn)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.models import ncsn


@pytest.fixture
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


def fields(image_size, num_scales, nf=128, sigma_max=50., reference='jax'):
  """Constructor arguments with the values of yang-song/score_sde configs/ve/ncsn*."""
  return dict(image_size=image_size, reference=reference, nf=nf, normalization='InstanceNorm++',
              nonlinearity='elu', sigma_min=0.01, sigma_max=sigma_max, num_scales=num_scales,
              interpolation='bilinear', centered=False)


def count_params(model, image_size, channels=3):
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, y)
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes['params']))


# Reference figures, established by building the reference models (nf 128, elu,
# InstanceNorm++) and summing parameter sizes:
# - 'jax': yang-song/score_sde models/ncsnv2.py, run with flax 0.12 through jax.eval_shape
#   of Module.init. Two reference bugs had to be patched to build it at all: NCSN's
#   ConditionalResidualBlock calls `self.normalization(h, y)` instead of
#   `self.normalization()(h, y)`, and ncsn_conv3x3's bias_init lambda lacks the dtype
#   argument newer flax passes; config.model.num_classes (absent from the reference
#   configs) was set to num_scales.
# - 'pytorch': yang-song/score_sde_pytorch models/ncsnv2.py with torch 2.13 (CPU),
#   sum(p.numel()). Patched to build: ncsn_conv3x3 scales a missing bias when
#   bias=False; NCSN asks for an unconditional norm and passes num_classes twice; its
#   ConditionalResidualBlock defaults dilation=None and then compares None > 1.
# The 32/64 px network and NCSN differ between the two (third RefineBlock 2nf vs nf
# wide); the 128 and 256 px networks agree. The count does not depend on image size,
# and for NCSNv2 not on num_scales (NCSN's embedding tables grow with num_scales).
REFERENCE_COUNTS = [
    # (constructor, image_size, num_scales, reference, parameters)
    (ncsn.ncsn, 32, 10, 'jax', 34_428_675),  # configs/ve/ncsn/cifar10.py
    (ncsn.ncsn, 32, 10, 'pytorch', 30_117_635),
    (ncsn.ncsnv2, 32, 232, 'jax', 33_970_563),  # configs/ve/ncsnv2/cifar10.py
    (ncsn.ncsnv2, 32, 232, 'pytorch', 29_694_083),
    (ncsn.ncsnv2, 64, 500, 'jax', 33_970_563),  # configs/ve/ncsnv2/celeba.py
    (ncsn.ncsnv2, 128, 1086, 'jax', 83_445_379),  # configs/ve/ncsnv2/bedroom.py
    (ncsn.ncsnv2, 256, 2000, 'pytorch', 94_132_611),  # 256 px LSUN defaults
]


@pytest.mark.parametrize('constructor, image_size, num_scales, reference, expected',
                         REFERENCE_COUNTS)
def test_parameter_count_matches_reference(constructor, image_size, num_scales, reference,
                                           expected):
  model = constructor(**fields(image_size, num_scales, reference=reference))
  assert count_params(model, image_size) == expected


def test_variant_selected_by_image_size():
  assert ncsn.ncsnv2(**fields(32, 10)).stages == ncsn._STAGES_32_64
  assert ncsn.ncsnv2(**fields(96, 10)).stages == ncsn._STAGES_128
  assert ncsn.ncsnv2(**fields(256, 10)).stages == ncsn._STAGES_256
  with pytest.raises(ValueError, match='256 px'):
    ncsn.ncsnv2(**fields(512, 10))
  with pytest.raises(ValueError, match='ncsnv2_128 for 96-128 px'):
    ncsn.ncsnv2_64(**fields(128, 10))


def numpy_instance_norm_plus(x, gamma, alpha, beta, ddof):
  """Instance norm++ (NCSN paper, appendix A) written out per sample and channel."""
  b, _, _, c = x.shape
  out = np.empty_like(x)
  for i in range(b):
    mu = np.array([x[i, :, :, k].mean() for k in range(c)])
    m, v = mu.mean(), np.sqrt(np.var(mu, ddof=ddof) + 1e-5)
    for k in range(c):
      s = np.sqrt(x[i, :, :, k].var() + 1e-5)
      z = (x[i, :, :, k] - mu[k]) / s + alpha[i, k] * (mu[k] - m) / v
      out[i, :, :, k] = gamma[i, k] * z + beta[i, k]
  return out


@pytest.mark.parametrize('ddof', [0, 1])
def test_conditional_instance_norm_plus_matches_numpy(x64, ddof):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 5, 6)) * rng.uniform(0.5, 3, size=6) + rng.normal(size=6)
  labels = np.array([2, 0, 2])
  table = rng.normal(size=(4, 18))  # 4 noise levels, [gamma | alpha | beta] for 6 channels
  module = ncsn.ConditionalInstanceNormPlus(num_classes=4, ddof=ddof)
  out = module.apply({'params': {'embedding': jnp.asarray(table)}}, jnp.asarray(x),
                     jnp.asarray(labels))
  gamma, alpha, beta = np.split(table[labels], 3, axis=-1)
  np.testing.assert_allclose(np.asarray(out),
                             numpy_instance_norm_plus(x, gamma, alpha, beta, ddof),
                             rtol=1e-10, atol=1e-12)


def test_unconditional_normalisations_match_numpy(x64):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 4, 5)) * rng.uniform(0.5, 3, size=5) + rng.normal(size=5)
  gamma, alpha, beta = rng.normal(size=(3, 5))
  out = ncsn.InstanceNormPlus(ddof=0).apply(
      {'params': {'gamma': gamma, 'alpha': alpha, 'beta': beta}}, jnp.asarray(x))
  tile = lambda v: np.tile(v, (2, 1))
  np.testing.assert_allclose(out, numpy_instance_norm_plus(x, tile(gamma), tile(alpha),
                                                           tile(beta), 0), rtol=1e-10)
  mu = x.mean(axis=(1, 2), keepdims=True)
  s = np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
  out = ncsn.InstanceNorm().apply({'params': {'scale': gamma, 'bias': beta}}, jnp.asarray(x))
  np.testing.assert_allclose(out, gamma * (x - mu) / s + beta, rtol=1e-10)
  out = ncsn.VarianceNorm().apply({'params': {'scale': gamma}}, jnp.asarray(x))
  np.testing.assert_allclose(out, gamma * x / s, rtol=1e-10)


def test_conditional_instance_norm_plus_init():
  x = jnp.ones((1, 2, 2, 5))
  table = ncsn.ConditionalInstanceNormPlus(num_classes=7).init(
      jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))['params']['embedding']
  assert table.shape == (7, 15)
  np.testing.assert_array_equal(table[:, 10:], 0.)  # beta starts at 0
  scales = np.asarray(table[:, :10])  # gamma, alpha ~ N(1, 0.02^2): 70 draws
  assert abs(scales.mean() - 1.) < 0.02 and 0.01 < scales.std() < 0.03


def test_align_corners_resize_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4, 2)).astype(np.float32)
  out = np.asarray(ncsn._resize(jnp.asarray(x), (7, 8), 'bilinear', align_corners=True))
  # Separable linear interpolation at source positions i (n_in - 1) / (n_out - 1).
  rows = np.linspace(0, 2, 7)
  cols = np.linspace(0, 3, 8)
  expected = np.empty((2, 7, 8, 2), np.float32)
  for b in range(2):
    for c in range(2):
      tmp = np.stack([np.interp(rows, np.arange(3), x[b, :, j, c]) for j in range(4)], 1)
      expected[b, :, :, c] = np.stack([np.interp(cols, np.arange(4), r) for r in tmp])
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # Corners coincide exactly under align_corners.
  np.testing.assert_array_equal(out[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]])


TINY = dict(image_size=16, num_scales=5, nf=8)


def numpy_params(model, x, labels, seed=0):
  """Random parameters with the model's tree (from eval_shape), drawn with NumPy.

  Running ``model.init`` for real costs ~20 s of per-shape compilation on CPU; the
  forward tests only need well-scaled weights: kernels N(0, 1/fan_in), biases and
  betas 0, norm scales and embedding tables 1 + N(0, 0.02^2) (as the reference init).
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, labels)['params']

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])),
                         jnp.float32)
    if name in ('bias', 'beta'):
      return jnp.zeros(leaf.shape)
    return jnp.asarray(1. + 0.02 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def tiny_inputs():
  return jax.random.uniform(jax.random.PRNGKey(1), (2, 16, 16, 3))


@pytest.mark.parametrize('reference', ['jax', 'pytorch'])
def test_ncsnv2_output_is_unconditional_net_divided_by_sigma(tiny_inputs, reference):
  model = ncsn.ncsnv2(**fields(**TINY, reference=reference))
  x = jnp.concatenate([tiny_inputs[:1], tiny_inputs[:1]])  # same image twice
  labels = jnp.array([0, 4])
  params = numpy_params(model, x, labels)
  out = model.apply({'params': params}, x, labels, train=False)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  assert float(jnp.std(out[0])) > 1e-3
  sigmas = np.exp(np.linspace(np.log(50.), np.log(0.01), 5))  # descending
  # The two copies of the image take different lanes of XLA's vectorised kernels, so they round
  # differently: float32 error relative to the activations' scale (seen: 2.6e-6 at AVX2).
  scaled = out[0] * sigmas[0]
  np.testing.assert_allclose(scaled, out[1] * sigmas[4], rtol=1e-4,
                             atol=1e-5 * float(jnp.abs(scaled).max()))
  out_train = model.apply({'params': params}, x, labels, train=True)
  np.testing.assert_array_equal(out, out_train)  # no dropout / batch statistics


def test_ncsn_conditions_on_noise_level(tiny_inputs):
  model = ncsn.ncsn(**fields(**TINY))
  x = jnp.concatenate([tiny_inputs[:1], tiny_inputs[:1]])
  labels = jnp.array([1, 3])
  params = numpy_params(model, x, labels)
  out = model.apply({'params': params}, x, labels, train=True)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  # Same image, different level: only the instance-norm++ table rows differ.
  assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3
  # Giving both levels the same table row makes the outputs equal (no sigma scaling).
  same = jax.tree_util.tree_map_with_path(
      lambda path, t: t.at[3].set(t[1]) if path[-1].key == 'embedding' else t, params)
  out_same = model.apply({'params': same}, x, labels, train=False)
  # Same image at two batch positions: float32 rounding relative to the outputs' scale (see above).
  atol = 1e-5 * float(jnp.abs(out_same[0]).max())
  np.testing.assert_allclose(out_same[0], out_same[1], rtol=1e-5, atol=atol)
  np.testing.assert_allclose(out_same[0], out[0], rtol=1e-5, atol=atol)


def test_rejects_bad_inputs(tiny_inputs):
  model = ncsn.ncsnv2(**fields(**TINY))
  with pytest.raises(TypeError, match='integer indices'):
    model.init(jax.random.PRNGKey(0), tiny_inputs, jnp.array([0.5, 0.1]))
  with pytest.raises(ValueError, match='divisible by 2'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 15, 15, 3)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError, match="valid choices: .*'InstanceNorm\\+\\+'"):
    ncsn.ncsnv2(**fields(**TINY)).clone(normalization='BatchNorm').init(
        jax.random.PRNGKey(0), tiny_inputs, jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match='only supports'):
    ncsn.ncsn(**fields(**TINY)).clone(normalization='GroupNorm').init(
        jax.random.PRNGKey(0), tiny_inputs, jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match="valid choices: \\['jax', 'pytorch'\\]"):
    ncsn.ncsnv2(**fields(**TINY, reference='tf'))
