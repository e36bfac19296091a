"""models/conv.py: the batch-chunked weight gradient equals lax's, in every mode of autodiff."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from score_sde.models import conv

# (dimension numbers, input shape, kernel shape, options): the batch of 20 leaves a last chunk of 4.
CASES = [
    (("NHWC", "HWIO", "NHWC"), (20, 8, 8, 3), (3, 3, 3, 5),
     dict(window_strides=(1, 1), padding="SAME")),
    (("NHWC", "HWIO", "NHWC"), (20, 9, 9, 4), (3, 3, 4, 6),
     dict(window_strides=(2, 2), padding=((1, 1), (1, 1)), rhs_dilation=(1, 2))),
    (("NCHW", "OIHW", "NCHW"), (20, 4, 7, 7), (6, 4, 3, 3),
     dict(window_strides=(1, 1), padding=((0, 1), (1, 0)), lhs_dilation=(2, 2))),
]


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _loss(fn, dn, options):
  return lambda x, w: jnp.sum(jnp.sin(fn(x, w, dimension_numbers=dn, **options)))


def _inputs(x_shape, w_shape):
  kx, kw, kt = jax.random.split(jax.random.PRNGKey(0), 3)
  return (jax.random.normal(kx, x_shape, jnp.float64), jax.random.normal(kw, w_shape, jnp.float64),
          jax.random.normal(kt, x_shape, jnp.float64))


def _count_convs(jaxpr) -> int:
  return str(jaxpr).count("conv_general_dilated[")


@pytest.mark.parametrize("dn,x_shape,w_shape,options", CASES)
def test_value_gradients_jvp_and_hessian_vector_product_equal_lax(dn, x_shape, w_shape, options):
  """Float64: the chunked sum differs from lax's only by summation order (~1e-14)."""
  x, w, t = _inputs(x_shape, w_shape)
  ours, theirs = _loss(conv.conv_general_dilated, dn, options), _loss(lax.conv_general_dilated,
                                                                       dn, options)
  np.testing.assert_allclose(ours(x, w), theirs(x, w), rtol=1e-14)
  grad = lambda loss: jax.jit(jax.grad(loss, (0, 1)))(x, w)
  for a, b in zip(grad(ours), grad(theirs)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
  f = lambda fn: (lambda x: fn(x, w, dimension_numbers=dn, **options))
  np.testing.assert_allclose(jax.jvp(f(conv.conv_general_dilated), (x,), (t,))[1],
                             jax.jvp(f(lax.conv_general_dilated), (x,), (t,))[1], rtol=1e-12)
  hvp = lambda loss: jax.jit(lambda v: jax.jvp(jax.grad(lambda w: loss(x, w)), (w,), (v,))[1])
  np.testing.assert_allclose(hvp(ours)(jnp.cos(w)), hvp(theirs)(jnp.cos(w)), rtol=1e-10,
                             atol=1e-10)


def test_weight_gradient_is_one_convolution_per_chunk_on_one_cpu_device(monkeypatch):
  dn, x_shape, w_shape, options = CASES[0]
  x, w, _ = _inputs(x_shape, w_shape)
  weight_grad = lambda fn: jax.make_jaxpr(jax.grad(lambda w: _loss(fn, dn, options)(x, w)))(w)
  # lax: the forward and one weight-gradient convolution; ours: 20 examples in chunks 8, 8, 4.
  assert _count_convs(weight_grad(lax.conv_general_dilated)) == 2
  assert _count_convs(weight_grad(conv.conv_general_dilated)) == 1 + 3
  monkeypatch.setattr(jax, "device_count", lambda: 4)  # a sharded batch is left to XLA
  assert _count_convs(weight_grad(conv.conv_general_dilated)) == 2


def test_small_batches_are_not_chunked():
  dn, _, w_shape, options = CASES[0]
  x, w, _ = _inputs((2 * conv.CHUNK - 1, 8, 8, 3), w_shape)
  jaxpr = jax.make_jaxpr(jax.grad(lambda w: _loss(conv.conv_general_dilated, dn, options)(x, w)))(w)
  assert _count_convs(jaxpr) == 2


def test_flax_conv_has_nn_conv_parameters_and_output():
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 6, 6, 3))
  ours, theirs = conv.Conv(4, (3, 3), strides=2), nn.Conv(4, (3, 3), strides=2)
  params = theirs.init(jax.random.PRNGKey(2), x)
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(2), x)) == jax.tree.structure(params)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-12)
  g = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)
  for a, b in zip(jax.tree.leaves(g(ours)), jax.tree.leaves(g(theirs))):
    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
