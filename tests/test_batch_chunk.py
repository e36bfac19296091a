"""config.model.batch_chunk: the network applied to chunks of the batch is the same function.

The first two tests compile a DDPM forward and backward per chunk: 10-20 s each, hence slow."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.experiment import builders, training
from score_sde.models.ddpm import DDPM
from tests.helpers.tiny_config import tiny_config

MODEL = DDPM(nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)
X = jax.random.uniform(jax.random.PRNGKey(2), (3, 8, 8, 3))  # chunks of 2: 2 + 1
LABELS = jnp.linspace(10.0, 900.0, 3)


@pytest.fixture(scope="module")
def params():
  """Initial parameters plus noise, so that the zero-initialised last convolution passes a signal."""
  params = jax.jit(lambda k: MODEL.init({"params": k, "dropout": k}, X[:1], LABELS[:1],
                                        train=False)["params"])(jax.random.PRNGKey(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  return tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.mark.slow
def test_chunks_give_the_whole_batch_output_and_gradients(params):
  whole, chunked = training.linen_model_fn(MODEL), training.linen_model_fn(MODEL, batch_chunk=2)
  # float32: the per-example computation is the same; XLA may fuse the chunks differently, and
  # the parameter gradient sums over chunks in another order (relative rounding ~1e-6). An output
  # near zero is a difference of O(1) activations, so its error is relative to the output's scale
  # (seen: 1.8e-6 on AMD EPYC / AVX2, where outputs reach 0.5).
  out = jax.jit(whole)(params, X, LABELS)
  np.testing.assert_allclose(jax.jit(chunked)(params, X, LABELS), out, rtol=1e-5,
                             atol=1e-5 * float(jnp.abs(out).max()))
  loss = lambda fn: jax.jit(jax.grad(lambda p: jnp.mean(fn(p, X, LABELS) ** 2)))(params)
  ref = loss(whole)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
               loss(chunked), ref)


@pytest.mark.slow
def test_chunk_i_draws_its_dropout_from_the_key_folded_with_i(params):
  rng = jax.random.PRNGKey(7)
  whole, chunked = training.linen_model_fn(MODEL), training.linen_model_fn(MODEL, batch_chunk=2)
  out = jax.jit(lambda p: chunked(p, X, LABELS, train=True, rng=rng))(params)
  for i, start in enumerate(range(0, 3, 2)):
    part = jax.jit(lambda p, x, y, k: whole(p, x, y, train=True, rng=k))(
        params, X[start:start + 2], LABELS[start:start + 2], jax.random.fold_in(rng, i))
    np.testing.assert_allclose(out[start:start + 2], part, rtol=1e-5, atol=1e-6)
  # Dropout is on (p = 0.1): the output differs from the deterministic one by far more than that.
  deterministic = jax.jit(lambda p: chunked(p, X, LABELS))(params)
  assert float(jnp.abs(out - deterministic).max()) > 1e-2 * float(jnp.abs(deterministic).max())


def test_batch_chunk_is_wired_from_the_config_and_checked():
  config = tiny_config()
  config.model.dropout = 0.0
  images = jax.random.uniform(jax.random.PRNGKey(1), (6, *builders.build_experiment(
      config).image_shape))
  losses = {}
  for chunk in (0, 4):
    config.model.batch_chunk = chunk
    exp = builders.build_experiment(config)
    params = exp.init_state().params
    losses[chunk] = jax.jit(exp.train_loss)(params, jax.random.PRNGKey(3), images)[1]["losses"]
  np.testing.assert_allclose(losses[4], losses[0], rtol=1e-5, atol=1e-7)
  config.model.batch_chunk = -1
  with pytest.raises(ValueError, match="config.model.batch_chunk must be an integer >= 0"):
    builders.build_experiment(config)
