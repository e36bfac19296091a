"""The training-system parts of consistency models and reflow: the target network's EMA in the train
step, and (noise, data) couplings as a dataset."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_sde.experiment import training
from score_sde.io import datasets


def _state(with_target):
  params = {"w": jnp.array([1.0, -2.0])}
  opt = optax.sgd(0.1)
  fields = dict(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                opt_state=opt.init(params))
  if with_target:
    return training.ConsistencyTrainState(**fields, target_params={"w": jnp.array([0.0, 0.0])}), opt
  return training.TrainState(**fields), opt


def test_consistency_state_moves_its_target_at_the_decay_the_loss_reports():
  """θ⁻ <- μ θ⁻ + (1 - μ) θ_new with μ = aux['target_decay'] (Song et al. 2023, Alg. 2), apart from
  the evaluation EMA; the loss sees the target and the step."""
  seen = {}

  def loss_fn(params, key, images, class_labels=None, *, target_params, step):
    seen["target"], seen["step"] = target_params, step
    loss = jnp.sum((params["w"] - 3.0) ** 2)
    return loss, {"losses": loss[None], "target_decay": jnp.float32(0.75),
                  "num_levels": jnp.int32(11)}

  state, opt = _state(with_target=True)
  step = jax.jit(training.make_train_step(loss_fn, opt, ema_rate=0.5, ema_warmup=False))
  batches = {"image": jnp.zeros((2, 1, 2))}
  new, metrics = step(state, batches, jax.random.PRNGKey(0))
  # Two SGD steps on (w - 3)^2 with lr 0.1: w <- w - 0.2 (w - 3).
  w1 = state.params["w"] - 0.2 * (state.params["w"] - 3.0)
  w2 = w1 - 0.2 * (w1 - 3.0)
  target = 0.75 * (0.75 * 0.0 + 0.25 * w1) + 0.25 * w2
  ema = 0.5 * (0.5 * state.params["w"] + 0.5 * w1) + 0.5 * w2
  np.testing.assert_allclose(new.params["w"], w2, rtol=1e-6)
  np.testing.assert_allclose(new.target_params["w"], target, rtol=1e-6)
  np.testing.assert_allclose(new.ema_params["w"], ema, rtol=1e-6)
  np.testing.assert_array_equal(metrics["num_levels"], [11, 11])
  assert int(new.step) == 2


def test_plain_state_passes_the_noise_of_couplings_to_the_loss():
  def loss_fn(params, key, images, class_labels=None, noise=None):
    loss = jnp.sum((params["w"] - jnp.mean(noise)) ** 2)
    return loss, {"losses": loss[None]}

  state, opt = _state(with_target=False)
  step = training.make_train_step(loss_fn, opt, ema_rate=0.9)
  batches = {"image": jnp.zeros((1, 1, 2)), "noise": jnp.full((1, 1, 2), 5.0)}
  new, _ = step(state, batches, jax.random.PRNGKey(0))
  np.testing.assert_allclose(new.params["w"], state.params["w"] - 0.2 * (state.params["w"] - 5.0),
                             rtol=1e-6)
  assert not isinstance(new, training.ConsistencyTrainState)


def test_init_with_target_copies_the_parameters():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, labels, train=False):
      return nn.Dense(x.shape[-1])(x)

  state = training.init_train_state(jax.random.PRNGKey(0), Net(), optax.adam(1e-3), (1, 2, 2, 1),
                                    with_target=True)
  assert isinstance(state, training.ConsistencyTrainState)
  jax.tree.map(np.testing.assert_array_equal, state.target_params, state.params)


def test_pairs_source_keeps_each_image_with_its_noise(tmp_path):
  """Shards of couplings read back as batches whose 'noise' row is the image's own partner, in any
  shuffled order and across shard boundaries."""
  rng = np.random.default_rng(0)
  for shard in range(3):
    noise = rng.normal(size=(5, 4, 4, 1)).astype(np.float32)
    datasets.write_pairs(str(tmp_path), shard, noise, np.tanh(noise) * 0.5 + 0.5)
  assert datasets.pair_shards(str(tmp_path)) == [0, 1, 2]
  spec = datasets.DataSpec(dataset="pairs", image_size=4, num_channels=1, path=str(tmp_path))
  with datasets.get_dataset(spec, batch_size=6, shuffle_seed=3, num_epochs=1) as it:
    batches = list(it)
  images = np.concatenate([b["image"] for b in batches])
  noise = np.concatenate([b["noise"] for b in batches])
  assert images.shape == (12, 4, 4, 1)  # 15 pairs, the partial batch dropped
  np.testing.assert_allclose(images, np.tanh(noise) * 0.5 + 0.5, rtol=1e-6)
  assert len({float(n.sum()) for n in noise}) == 12  # distinct pairs, shuffled across shards


def test_pairs_refuse_what_would_break_the_couplings(tmp_path):
  spec = datasets.DataSpec(dataset="pairs", image_size=4, num_channels=1, path=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="--mode reflow_pairs"):
    datasets.get_dataset(spec, batch_size=2)
  datasets.write_pairs(str(tmp_path), 0, np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 4, 1)))
  with pytest.raises(ValueError, match="random_flip=False"):
    datasets.get_dataset(spec, batch_size=2, random_flip=True)
  with pytest.raises(ValueError, match=r"\(4, 4, 1\).*\(8, 8, 1\)"):
    datasets.get_dataset(datasets.DataSpec(dataset="pairs", image_size=8, num_channels=1,
                                           path=str(tmp_path)), batch_size=2)
  with pytest.raises(ValueError, match="needs config.data.path"):
    datasets.check_data_spec(datasets.DataSpec(dataset="pairs", image_size=4, num_channels=1),
                             prefix="config.data.")


def test_the_consistency_objectives_are_named_once():
  from score_sde.diffusion import consistency, losses, parametrization
  assert set(consistency.OBJECTIVES) == set(parametrization.CONSISTENCY_OBJECTIVES)
  assert set(consistency.OBJECTIVES) <= set(losses.OBJECTIVES)
