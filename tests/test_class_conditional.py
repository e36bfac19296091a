"""Class-conditional score networks, label dropout, and the noise-conditional classifier's loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.experiment import classifier_training, training
from score_sde.diffusion import losses, toy
from score_sde.diffusion import sde as sde_lib
from score_sde.models.ddpm import DDPM
from score_sde.models.ncsnpp import NCSNpp

TINY = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
            resblock_type="ddpm", fir=False, progressive_input="none", embedding_type="positional",
            scale_by_sigma=False, centered=True)


def _init(module, class_labels=None):
  x = jnp.zeros((2, 8, 8, 1))
  kw = {} if class_labels is None else {"class_labels": class_labels}
  return module.init(jax.random.PRNGKey(0), x, jnp.zeros((2,)), train=False, **kw)["params"]


@pytest.mark.slow
@pytest.mark.parametrize("module_class", [NCSNpp, DDPM])
def test_class_embedding_conditions_the_output(module_class):
  # DDPM's GroupNorm has 32 groups: with 32 channels each group is one channel, and normalising it
  # would remove the per-channel embedding; 64 channels keep two per group.
  fields = TINY if module_class is NCSNpp else dict(
      nf=64, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
      scale_by_sigma=False, centered=True)
  module = module_class(**fields, num_classes=3)
  params = _init(module, jnp.array([0, 3]))
  width = 4 * fields["nf"]
  assert params["class_embed"]["embedding"].shape == (4, width)  # 3 classes + null
  # Random weights everywhere (the output conv starts at zero), so labels visibly change the output.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 1))
  t = jnp.array([10.0, 10.0])
  out = {y: module.apply({"params": params}, x, t, train=False, class_labels=jnp.array([y, y]))
         for y in range(4)}
  for a in range(4):
    for b in range(a):
      assert float(jnp.max(jnp.abs(out[a] - out[b]))) > 1e-2 * float(jnp.max(jnp.abs(out[a])))
  with pytest.raises(ValueError, match="class_labels"):
    module.apply({"params": params}, x, t, train=False)
  unconditional = module_class(**fields)
  assert "class_embed" not in _init(unconditional)
  with pytest.raises(ValueError, match="unconditional"):
    unconditional.apply({"params": _init(unconditional)}, x, t, train=False,
                        class_labels=jnp.array([0, 1]))


def _recording_model():
  """model_fn(params, x, labels, class_labels=) = params * x + class label, recording the labels."""
  def model_fn(params, x, labels, *, train=False, rng=None, class_labels=None):
    return params * x + class_labels.astype(x.dtype)[:, None]
  return model_fn


@pytest.mark.parametrize("objective,continuous", [("dsm", True), ("ddpm", False), ("edm", True)])
@pytest.mark.parametrize("dropout,expected", [(0.0, "labels"), (1.0, "null")])
def test_loss_uses_labels_or_the_null_class(objective, continuous, dropout, expected):
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=100)
  model_fn, k = _recording_model(), 5
  conditional = losses.get_loss_fn(objective, sde, model_fn, train=True, continuous=continuous,
                                   num_classes=k, class_dropout=dropout)
  batch = jax.random.normal(jax.random.PRNGKey(0), (16, 3))
  labels = jnp.arange(16) % k
  key = jax.random.PRNGKey(1)
  loss, _ = conditional(0.5, key, batch, labels)
  # The same loss of a network whose labels are fixed by hand, fed the key left after the split.
  used = labels if expected == "labels" else jnp.full_like(labels, k)
  fixed = lambda p, x, l, **kw: model_fn(p, x, l, class_labels=used)
  plain = losses.get_loss_fn(objective, sde, fixed, train=True, continuous=continuous)
  expected_loss, _ = plain(0.5, jax.random.split(key)[0], batch)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)


def test_label_dropout_rate():
  labels = jnp.zeros((200_000,), jnp.int32)
  dropped = losses.drop_class_labels(jax.random.PRNGKey(0), labels, 10, 0.1)
  rate = float(jnp.mean(dropped == 10))
  assert set(np.unique(np.asarray(dropped))) == {0, 10}
  assert abs(rate - 0.1) < 5 * np.sqrt(0.1 * 0.9 / labels.size)


def test_null_class_model_fn_feeds_the_null_label():
  model_fn = training.null_class_model_fn(_recording_model(), 7)
  out = model_fn(0.0, jnp.zeros((3, 2)), jnp.zeros((3,)))
  np.testing.assert_array_equal(out, 7.0)


@pytest.mark.slow  # 5-10 s on 2 cores; the fast tier stays under 3 minutes
def test_classifier_loss_is_minimised_by_the_exact_noisy_posterior(x64):
  """Cross-entropy is a proper scoring rule: the exact p_t(y | x) beats any perturbation of it.

  For a two-component mixture the classifier input x_in = x_0 + sigma z (sigma = std / m) has
  p(k | x_in) proportional to w_k N(x_in; mu_k, cov_k + sigma^2 I), in closed form.
  """
  sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
  mix = toy.isotropic_mixture([0.3, 0.7], jnp.array([[-1.0, 0.0], [1.0, 0.5]]), 0.6)

  def exact_logits(params, x_in, sigma):  # params: a perturbation (scale, bias of class 1)
    means, covs = mix.means[None], mix.covs[None] + (sigma**2)[:, None, None, None] * jnp.eye(2)
    diff = x_in[:, None] - means
    quad = jnp.einsum("bki,bkij,bkj->bk", diff, jnp.linalg.inv(covs), diff)
    logits = jnp.log(mix.weights) - 0.5 * quad - 0.5 * jnp.linalg.slogdet(covs)[1]
    return params[0] * logits + jnp.array([0.0, params[1]])

  n = 40_000
  comp = mix.sample_components(jax.random.PRNGKey(0), n)
  x0 = mix.sample_given_components(jax.random.PRNGKey(1), comp)
  loss_fn = classifier_training.noisy_classifier_loss_fn(sde, exact_logits, eps=1e-3)
  key = jax.random.PRNGKey(2)
  _, exact = loss_fn(jnp.array([1.0, 0.0]), key, x0, comp)
  for perturbed in ([1.3, 0.0], [0.7, 0.0], [1.0, 0.4]):
    _, other = loss_fn(jnp.array(perturbed), key, x0, comp)  # same noise: a paired comparison
    diff = np.asarray(other["losses"] - exact["losses"])
    assert diff.mean() > 5 * diff.std() / np.sqrt(n), perturbed
  # The gradient of the expected loss vanishes at the exact posterior (within Monte Carlo error).
  grads = jax.vmap(jax.grad(lambda p, k, x, y: loss_fn(p, k, x[None], y[None])[0]),
                   (None, 0, 0, 0))(jnp.array([1.0, 0.0]), jax.random.split(key, 4000), x0[:4000],
                                    comp[:4000])
  se = np.asarray(grads.std(0)) / np.sqrt(4000)
  np.testing.assert_array_less(np.abs(np.asarray(grads.mean(0))), 5 * se + 1e-12)
