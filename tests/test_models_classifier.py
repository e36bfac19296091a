"""Tests for the noise-conditional Wide-ResNet classifier (score_sde.models.classifier)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.models import classifier


def param_shapes(model, batch=1, size=32):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  sigma = jax.ShapeDtypeStruct((batch,), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x, sigma)['params']


def test_reference_parameter_count_and_layout():
  # 38,913,242: yang-song/score_sde models/wideresnet_noise_conditional.py
  # WideResnet(blocks_per_group=4, channel_multiplier=10, num_outputs=10), the model its
  # controllable-generation code builds (models/utils.py create_classifier), initialised
  # under jax.eval_shape with flax 0.12 on a [1, 32, 32, 3] input; sum of leaf sizes.
  # The count includes the 128 frozen Fourier frequencies, which are stored as params.
  model = classifier.NoiseConditionalWideResNet()
  shapes = param_shapes(model)
  assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)) == 38_913_242
  # The reference's module names, so its checkpoints restore without renaming.
  assert sorted(shapes) == ['Dense_0', 'Dense_1', 'Dense_2', 'GaussianFourierProjection_0',
                            'WideResnetGroup_0', 'WideResnetGroup_1', 'WideResnetGroup_2',
                            'init_conv', 'pre-pool-bn']
  block = shapes['WideResnetGroup_1']['WideResnetBlock_0']
  assert {k: jax.tree_util.tree_map(lambda a: a.shape, v) for k, v in block.items()} == {
      'init_bn': {'scale': (160,), 'bias': (160,)},
      'conv1': {'kernel': (3, 3, 160, 320)},
      'Dense_0': {'kernel': (512, 320), 'bias': (320,)},
      'bn_2': {'scale': (320,), 'bias': (320,)},
      'conv2': {'kernel': (3, 3, 320, 320)},
  }
  assert set(shapes['WideResnetGroup_2']) == {f'WideResnetBlock_{i}' for i in range(4)}
  assert shapes['GaussianFourierProjection_0']['W'].shape == (128,)
  assert shapes['Dense_2']['kernel'].shape == (640, 10)


@pytest.fixture(scope='module')
def tiny():
  """WRN-10-1 with 3 classes: one block per group, widths 16/32/64.

  Parameters are drawn with NumPy into the eval_shape tree (a real ``init`` costs ~15 s
  of per-shape compilation on CPU): kernels N(0, 1/fan_in), GroupNorm scale 1, biases
  0, Fourier frequencies N(0, 16^2) as in the reference.
  """
  model = classifier.NoiseConditionalWideResNet(depth=10, widen_factor=1, num_classes=3)
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      scale = 1. / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == 'W':
      scale = 16.
    else:
      return jnp.full(leaf.shape, 1. if name == 'scale' else 0.)
    return jnp.asarray(scale * rng.normal(size=leaf.shape), jnp.float32)

  params = jax.tree_util.tree_map_with_path(draw, param_shapes(model, batch=2, size=8))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  sigma = jnp.array([0.1, 10.])
  return model, params, x, sigma


@pytest.mark.slow
def test_logits_shape_finite_and_train_flag(tiny):
  model, params, x, sigma = tiny
  logits = model.apply({'params': params}, x, sigma, train=False)
  assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
  np.testing.assert_array_equal(logits, model.apply({'params': params}, x, sigma, train=True))


@pytest.mark.slow  # ~7 s: compiles the WRN
def test_logits_depend_on_noise_scale(tiny):
  model, params, x, _ = tiny
  same_x = jnp.concatenate([x[:1], x[:1]])
  logits = model.apply({'params': params}, same_x, jnp.array([0.01, 50.]))
  assert float(jnp.max(jnp.abs(logits[0] - logits[1]))) > 1e-4


def test_per_image_standardisation_invariance(tiny):
  # The network first maps each image to zero mean and unit std, so logits are
  # invariant to x -> a x + b per image (a > 0) while std(x) > 1/sqrt(HWC).
  model, params, x, sigma = tiny
  a = jnp.array([3., 0.5])[:, None, None, None]
  b = jnp.array([-1., 2.])[:, None, None, None]
  apply = jax.jit(model.apply)  # one compile for both calls (eager applies take ~5 s)
  logits = apply({'params': params}, x, sigma)
  np.testing.assert_allclose(apply({'params': params}, a * x + b, sigma), logits,
                             rtol=1e-4, atol=1e-5)


def test_classifier_guidance_gradient(tiny):
  # grad_x log p_t(y | x) as used for class-conditional sampling: finite, input-shaped,
  # and sum_k p_k grad_x log p_k = grad_x sum_k p_k = 0. The frozen Fourier
  # frequencies W get no gradient.
  model, params, x, sigma = tiny

  def log_prob(x, w, y):
    p = {**params, 'GaussianFourierProjection_0': {'W': w}}
    logits = model.apply({'params': p}, x, sigma)
    return jax.nn.log_softmax(logits)[jnp.arange(2), y].sum()

  w = params['GaussianFourierProjection_0']['W']
  grad_fn = jax.jit(jax.grad(log_prob, argnums=(0, 1)))
  grads = [grad_fn(x, w, jnp.array([k, k])) for k in range(3)]
  grads_x = [g[0] for g in grads]
  assert grads_x[0].shape == x.shape and all(bool(jnp.all(jnp.isfinite(g))) for g in grads_x)
  assert float(jnp.abs(grads_x[0]).max()) > 0.
  np.testing.assert_array_equal(grads[0][1], 0.)
  probs = jax.nn.softmax(model.apply({'params': params}, x, sigma))  # [B, K]
  weighted = sum(probs[:, k][:, None, None, None] * grads_x[k] for k in range(3))
  np.testing.assert_allclose(weighted, 0., atol=1e-5 * float(jnp.abs(grads_x[0]).max()))


def test_standardize_cifar10():
  x = jnp.broadcast_to(jnp.asarray(classifier.CIFAR10_MEAN), (1, 2, 2, 3))
  np.testing.assert_allclose(classifier.standardize_cifar10(x), 0., atol=1e-7)
  x1 = x + jnp.asarray(classifier.CIFAR10_STD)
  np.testing.assert_allclose(classifier.standardize_cifar10(x1), 1., rtol=1e-6)


def test_rejects_bad_inputs(tiny):
  model, params, x, sigma = tiny
  with pytest.raises(ValueError, match='6n \\+ 4'):
    classifier.NoiseConditionalWideResNet(depth=27).init(jax.random.PRNGKey(0), x, sigma)
  with pytest.raises(ValueError, match='noise scales sigma with shape'):
    model.apply({'params': params}, x, sigma[:1])
