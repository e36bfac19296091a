"""Super-resolution networks and runs: the low-resolution input reaches NCSN++, DDPM and DiT (exact
parameter counts of what it adds), the objective of a super-resolution model is the configured one
with the pooled, augmented batch bound, and train -> sample -> eval, the cascade and --mode
upsample run end to end on tiny digits configs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from score_sde.diffusion import sde as sde_lib
from score_sde.experiment import builders, cascade, evaluation, super_resolution, train
from score_sde.models.ddpm import DDPM
from score_sde.models.dit import DiT
from score_sde.models.ncsnpp import NCSNpp
from tests.helpers.tiny_config import tiny_config

NETWORKS = {
    "ncsnpp": lambda c: NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                               resblock_type="ddpm", embedding_type="positional",
                               scale_by_sigma=False, centered=True, low_res_channels=c),
    "ddpm": lambda c: DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                           low_res_channels=c),
    "dit": lambda c: DiT(patch_size=2, hidden_size=16, depth=1, num_heads=2, low_res_channels=c),
}


def _count(module, low_res):
  x, labels = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,))
  extra = {} if low_res is None else {"low_res": low_res, "aug_level": jnp.zeros((2,))}
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, labels, train=False,
                                              **extra))
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_low_res_input_adds_exactly_its_input_channels_and_the_level_embedding(name):
  """C' more input channels of the first layer (3x3 conv: 9 nf C'; DiT's patch embedding: p² C' D)
  plus the level embedding's Dense (NCSN++/DDPM: nf -> 4 nf; DiT: 256 -> D)."""
  plain = _count(NETWORKS[name](0), None)
  sr = _count(NETWORKS[name](1), jnp.zeros((2, 4, 4, 1)))
  added = {"ncsnpp": 9 * 8 + (8 * 32 + 32), "ddpm": 9 * 32 + (32 * 128 + 128),
           "dit": 4 * 16 + (256 * 16 + 16)}[name]
  assert sr - plain == added


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_output_depends_on_the_low_res_input_and_its_absence_is_refused(name):
  module = NETWORKS[name](1)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  labels = jnp.array([0.3, 0.7])
  low = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 1))
  level = jnp.zeros((2,))
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(2), x, labels, train=False,
                                              low_res=low, aug_level=level))
  # Random parameters (zero-initialised output layers would hide the dependence), made without
  # compiling the initialisers.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), shapes)
  apply = jax.jit(lambda lo, s: module.apply(variables, x, labels, train=False, low_res=lo,
                                             aug_level=s))
  base = apply(low, level)
  assert float(jnp.abs(apply(low + 1.0, level) - base).max()) > 1e-3
  assert float(jnp.abs(apply(low, level + 0.5) - base).max()) > 1e-3
  with pytest.raises(ValueError, match="super-resolution network.*pass low_res"):
    module.apply(variables, x, labels, train=False)
  with pytest.raises(ValueError, match="low_res must be"):
    module.apply(variables, x, labels, train=False, low_res=jnp.zeros((2, 3, 3, 1)),
                 aug_level=level)


def test_downsample_and_augmentation_follow_their_definitions():
  sr = super_resolution.SuperResolution(factor=2, aug_max=0.5, sample_aug_level=0.2)
  images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  np.testing.assert_allclose(sr.downsample(images)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
  vp = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=100)
  low = jnp.ones((3, 2, 2, 1))
  key = jax.random.PRNGKey(0)
  level = jnp.array([0.0, 0.2, 1.0])
  out = sr.augment(key, vp, low, level)
  m, std = vp.marginal_params(level * vp.T)
  z = jax.random.normal(key, low.shape)
  np.testing.assert_array_equal(out[0], low[0])  # s = 0: the image itself
  np.testing.assert_allclose(out[1:], m[1:, None, None, None] * low[1:]
                             + std[1:, None, None, None] * z[1:], rtol=1e-6)


def test_the_super_resolution_loss_is_the_objective_with_the_condition_bound():
  sr = super_resolution.SuperResolution(factor=2, aug_max=0.3, sample_aug_level=0.0)
  vp = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=100)
  seen = {}

  def model_fn(params, x, labels, *, low_res=None, aug_level=None, **kwargs):
    seen.update(low_res=low_res, aug_level=aug_level)
    return params * x

  def build(fn):
    return lambda params, key, images: (jnp.sum(fn(params, images, None)), {"key": key})

  images = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 4, 1))
  key = jax.random.PRNGKey(7)
  loss, aux = super_resolution.conditioned_loss(build, model_fn, vp, sr)(2.0, key, images)
  condition_key, loss_key = jax.random.split(key)
  low, level = sr.training_condition(condition_key, vp, images)
  np.testing.assert_array_equal(seen["low_res"], low)
  np.testing.assert_array_equal(seen["aug_level"], level)
  assert float(jnp.max(level)) <= 0.3 and low.shape == (4, 2, 2, 1)
  np.testing.assert_array_equal(aux["key"], loss_key)
  assert float(loss) == pytest.approx(float(2.0 * jnp.sum(images)))


def test_super_resolution_configs_refuse_what_they_cannot_do():
  config = tiny_config()
  config.super_resolution.factor = 3
  with pytest.raises(ValueError, match="image_size=8 must be divisible by .*factor=3"):
    builders.check_config(config)
  config.super_resolution.factor = 2
  config.eval.enable_bpd = True
  with pytest.raises(ValueError, match="enable_bpd=True is not available for a super-resolution"):
    builders.check_config(config)
  config.eval.enable_bpd = False
  config.super_resolution.aug_max = 2.0
  with pytest.raises(ValueError, match=r"aug_max=2.0 is a level s in \[0, 1\]"):
    builders.check_config(config)


def _sr_config(image_size=8):
  config = tiny_config()
  config.data.image_size = image_size
  config.super_resolution.update(factor=2, aug_max=0.3, sample_aug_level=0.1)
  config.eval.update(enable_bpd=False, enable_sampling=True, num_samples=8, batch_size=8,
                     begin_ckpt=1, end_ckpt=1, checkpoint_timeout_s=0.0)
  config.training.update(n_iters=3, snapshot_freq=3, snapshot_freq_for_preemption=0)
  config.model.num_scales = 5
  return config


@pytest.mark.slow
def test_train_sample_eval_cascade_and_upsample(tmp_path):
  sr_config = _sr_config()
  sr_dir = tmp_path / "sr"
  state = train.train(sr_config, str(sr_dir))
  assert state.params["Conv_0"]["kernel"].shape[2] == 2  # x and the upsampled 4x4 digit
  report = evaluation.evaluate(sr_config, str(sr_dir))[3]
  assert np.isfinite(report["fdd"]["value"]) and "bpd" not in report
  spec = json.load(open(sr_dir / "eval" / "ckpt_1" / "sampling.json"))
  assert spec["super_resolution"] == {"factor": 2, "sample_aug_level": 0.1}

  # A 4x4 base and the cascade 4 -> 8, through config files as users give them.
  base_config = tiny_config()
  base_config.data.image_size = 4
  base_config.training.update(n_iters=3, snapshot_freq=3, snapshot_freq_for_preemption=0)
  base_config.model.num_scales = 5
  train.train(base_config, str(tmp_path / "base"))
  files = {}
  for name, config in (("base", base_config), ("sr", sr_config)):
    path = tmp_path / f"{name}_config.py"
    path.write_text("import ml_collections, json\n\ndef get_config():\n"
                    f"  return ml_collections.ConfigDict(json.loads({config.to_json()!r}))\n")
    files[name] = str(path)
  cascade_config = _sr_config()
  cascade_config.cascade.update(base_config=files["base"], base_workdir=str(tmp_path / "base"),
                                stage_configs=(files["sr"],), stage_workdirs=(str(sr_dir),))
  grid = cascade.sample_cascade(cascade_config, str(tmp_path / "cascade"))
  assert os.path.basename(grid) == "stage_1.png"
  with np.load(tmp_path / "cascade" / "cascade" / "stage_0.npz") as s0, \
       np.load(tmp_path / "cascade" / "cascade" / "stage_1.npz") as s1:
    assert s0["samples"].shape == (8, 4, 4, 1) and s1["samples"].shape == (8, 8, 8, 1)
  assert "fdd" in json.load(open(tmp_path / "cascade" / "cascade" / "report.json"))

  inputs = tmp_path / "inputs"
  inputs.mkdir()
  for i in range(3):
    Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(inputs / f"d{i}.png")
  path = cascade.upsample(sr_config, str(sr_dir), str(inputs))
  assert os.path.isfile(path) and os.path.isfile(os.path.join(os.path.dirname(path), "d2.png"))
  assert np.asarray(Image.open(os.path.join(os.path.dirname(path), "d2.png"))).shape[:2] == (8, 8)
