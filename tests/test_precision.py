"""The accelerator options of issue 15 (goal 6): bfloat16 compute with float32 parameters and loss
(`config.model.compute_dtype`) and jax.checkpoint per block (`config.model.remat`).

The model tests compile NCSN++/DDPM/DiT forward and backward passes: 30-130 s each on the 2 shared
CPU cores, hence slow."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.experiment import builders, train, training
from score_sde.io import logging_utils
from score_sde.models import layers
from score_sde.models.ddpm import DDPM
from score_sde.models.dit import DiT
from score_sde.models.ncsnpp import NCSNpp
from tests.helpers.tiny_config import tiny_config

X_SHAPE = (2, 8, 8, 3)
# Tiny backbones with attention; NCSN++ with the FIR BigGAN blocks and the Fourier embedding.
NETWORKS = {
    "ncsnpp": NCSNpp(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1),
    "ddpmpp": NCSNpp(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
                     resblock_type="ddpm", fir=False, progressive_input="none",
                     embedding_type="positional", scale_by_sigma=False),
    "ddpm": DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1),
    "dit": DiT(patch_size=2, hidden_size=32, depth=2, num_heads=4),
}
LABELS = {"ncsnpp": jnp.array([0.5, 20.0]), "ddpmpp": jnp.array([10.0, 700.0]),
          "ddpm": jnp.array([10.0, 700.0]), "dit": jnp.array([10.0, 700.0])}


def _params(model, seed=0):
  """Initial parameters plus noise, so that the zero-initialised output layers (adaLN-Zero, the
  last convolutions) pass a signal."""
  key = jax.random.PRNGKey(seed)
  params = jax.jit(lambda k: model.init({"params": k, "dropout": k}, jnp.zeros(X_SHAPE),
                                        jnp.ones(2), train=False)["params"])(key)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def _x(seed=2):
  return jax.random.uniform(jax.random.PRNGKey(seed), X_SHAPE)


def _eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it (jit, remat, custom_jvp, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _eqns(sub)


def _input_dtypes(jaxpr, primitives):
  return {(e.primitive.name, str(v.aval.dtype)) for e in _eqns(jaxpr)
          if e.primitive.name in primitives for v in e.invars}


# ---------------------------------------------------------------------------------------- bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ncsnpp", "dit"])
def test_bf16_forward_agrees_with_float32(name):
  """bf16 rounds to 8 significant bits (relative 2⁻⁹ ≈ 2e-3 per operation); through a few
  layers the output keeps ~1e-2 of its scale. The error must be that small and not zero."""
  model, labels = NETWORKS[name], LABELS[name]
  params, x = _params(model), _x()
  ref = jax.jit(training.linen_model_fn(model))(params, x, labels)
  out = jax.jit(training.linen_model_fn(model, jnp.bfloat16))(params, x, labels)
  assert out.dtype == ref.dtype == jnp.float32
  err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
  assert 0 < err < 2e-2, err


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ncsnpp", "ddpmpp", "ddpm", "dit"])
def test_bf16_runs_every_conv_and_matmul_in_bf16_with_float32_reductions(name):
  """The convolutions and matmuls see bf16 operands only; the reductions (GroupNorm/LayerNorm
  statistics, the softmax's max and sum) run in float32."""
  model, labels = NETWORKS[name], LABELS[name]
  params = _params(model)
  jaxpr = jax.make_jaxpr(training.linen_model_fn(model, jnp.bfloat16))(params, _x(), labels).jaxpr
  matmuls = _input_dtypes(jaxpr, ("conv_general_dilated", "dot_general"))
  assert {dtype for _, dtype in matmuls} == {"bfloat16"}, matmuls
  assert ("dot_general", "bfloat16") in matmuls
  if name != "dit":
    assert ("conv_general_dilated", "bfloat16") in matmuls
  reductions = _input_dtypes(jaxpr, ("reduce_sum", "reduce_max"))
  assert reductions and {dtype for _, dtype in reductions} == {"float32"}, reductions


@pytest.mark.slow
def test_bf16_gradients_reach_float32_parameters():
  model = NETWORKS["ddpmpp"]
  params, x = _params(model), _x()
  model_fn = training.linen_model_fn(model, jnp.bfloat16)
  grads = jax.jit(jax.grad(lambda p: jnp.mean(model_fn(p, x, LABELS["ddpmpp"]) ** 2)))(params)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def _train_losses(tmp_path, compute_dtype, n_iters=30):
  config = tiny_config()
  config.model.compute_dtype = compute_dtype
  config.training.n_iters = n_iters
  config.training.log_freq = 1
  workdir = str(tmp_path / compute_dtype)
  state = train.train(config, workdir)
  scalars = logging_utils.read_scalars(os.path.join(workdir, "tensorboard"))
  return state, np.asarray([v for _, v in scalars["training_loss"]])


@pytest.mark.slow
def test_a_bf16_run_trains(tmp_path):
  """30 steps of the tiny digits DDPM++ in bf16 and in float32 from the same seed: the same
  batches and noise, so the per-step losses differ only by the rounding of the network; the mean
  of the last 10 agrees within 5% (bf16's ~1e-2 output error, compounded over 30 updates), and the
  loss falls as in float32."""
  state, bf16 = _train_losses(tmp_path, "bfloat16")
  _, f32 = _train_losses(tmp_path, "float32")
  assert {p.dtype for p in jax.tree.leaves((state.params, state.ema_params))} == {
      jnp.dtype(jnp.float32)}
  assert len(bf16) == len(f32) == 30 and np.isfinite(bf16).all()
  np.testing.assert_allclose(bf16[-10:].mean(), f32[-10:].mean(), rtol=0.05)
  assert bf16[-10:].mean() < 0.8 * bf16[:5].mean()


def test_bad_compute_dtype_and_unsupported_model_are_refused():
  config = tiny_config()
  config.model.compute_dtype = "float16"
  with pytest.raises(ValueError, match=r"config.model.compute_dtype='float16' is not valid; "
                                       r"choose one of \['float32', 'bfloat16'\]"):
    builders.build_experiment(config)
  config.model.compute_dtype = "bfloat16"
  config.model.name = "ncsnv2_64"
  with pytest.raises(ValueError, match="config.model.compute_dtype is supported by models"):
    builders.compute_dtype(config)


def test_config_defaults_build_float32_without_remat():
  config = tiny_config()
  assert config.model.compute_dtype == "float32" and config.model.remat is False
  assert builders.compute_dtype(config) == jnp.float32
  assert builders.get_model(config).remat is False


# ------------------------------------------------------------------------------------------- remat


def _paths(params):
  return [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ncsnpp", "ddpmpp", "ddpm", "dit"])
def test_remat_keeps_parameter_paths_outputs_and_gradients(name):
  model, labels = NETWORKS[name], LABELS[name]
  remat = model.clone(remat=True)
  params = _params(model)
  assert _paths(_params(remat)) == _paths(params)
  x, rng = _x(), jax.random.PRNGKey(3)

  def loss(m):
    fn = training.linen_model_fn(m)
    return lambda p: jnp.mean(fn(p, x, labels, train=True, rng=rng) ** 2)

  # The recomputation runs the same operations (and the same dropout masks), but XLA may fuse and
  # reassociate the backward pass differently: equal up to float32 rounding, rtol 1e-5 and atol
  # 1e-5 of the largest value (gradients that are 0 in exact arithmetic, e.g. of a bias that a
  # GroupNorm cancels, come out as ±1e-11 noise).
  for fn in (lambda m: jax.jit(lambda p: training.linen_model_fn(m)(
                 p, x, labels, train=True, rng=rng))(params),
             lambda m: jax.jit(jax.grad(loss(m)))(params)):
    ref = fn(model)
    scale = max(float(jnp.abs(r).max()) for r in jax.tree.leaves(ref))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale),
                 fn(remat), ref)
  checkpoints = lambda m: [e for e in _eqns(jax.make_jaxpr(jax.grad(loss(m)))(params).jaxpr)
                           if e.primitive.name in ("checkpoint", "remat2")]  # jax.checkpoint's
  assert checkpoints(remat) and not checkpoints(model)


def test_remat_is_wired_from_the_config_and_refused_elsewhere():
  config = tiny_config()
  config.model.remat = True
  assert builders.get_model(config).remat is True
  config.model.name = "ncsnv2_64"
  with pytest.raises(ValueError, match="config.model.remat is supported by models"):
    builders.get_model(config)


def test_block_maker_names_blocks_as_flax_does():
  class Net(nn.Module):
    remat: bool | None  # None: flax's own naming

    @nn.compact
    def __call__(self, x):
      if self.remat is None:
        return layers.NIN(4)(layers.NIN(4)(x))
      block = layers.block_maker(self.remat)
      return block(layers.NIN, num_units=4)(block(layers.NIN, num_units=4)(x))

  x, key = jnp.ones((1, 2, 2, 4)), jax.random.PRNGKey(0)
  ref = Net(None).init(key, x)
  for remat in (False, True):
    jax.tree.map(np.testing.assert_array_equal, Net(remat).init(key, x), ref)
