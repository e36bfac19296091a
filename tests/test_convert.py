"""Checkpoint import: synthetic score_sde_pytorch / score_sde (Flax) checkpoints of tiny models.

The expected PyTorch module lists below are written out by hand from the reference's constructor
(score_sde_pytorch models/ncsnpp.py and ddpm.py), independently of score_sde.io.convert.
"""
import collections
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import serialization

from score_sde.experiment import convert_cli
from score_sde.experiment.builders import conversion_kwargs, get_model
from score_sde.io import convert, torch_pickle
from tests.helpers import torch_save


def tiny_config(name="ncsnpp"):
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({"continuous": True})
  config.data = ml_collections.ConfigDict(
      {"image_size": 32, "num_channels": 3, "centered": name == "ddpm"})
  config.model = ml_collections.ConfigDict(dict(
      name=name, scale_by_sigma=name == "ncsnpp", normalization="GroupNorm", nonlinearity="swish",
      nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resamp_with_conv=True,
      conditional=True, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
      resblock_type="biggan", progressive="none", progressive_input="residual",
      progressive_combine="sum", attention_type="ddpm", init_scale=0.0, fourier_scale=16,
      conv_size=3, embedding_type="fourier", dropout=0.1, sigma_min=0.01, sigma_max=50.0,
      num_scales=1000))
  return config


def experiment_config():
  """tiny_config plus the training fields a work directory's TrainState needs."""
  config = tiny_config()
  config.seed = 0
  config.training.sde = "vesde"
  config.optim = ml_collections.ConfigDict(dict(
      optimizer="Adam", lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0.0, warmup=10, grad_clip=1.0))
  return config


# Torch submodules of each block type: (submodule, param, torch shape).
def biggan(cin, cout, resample=False, temb=128):
  keys = [("GroupNorm_0", "weight", (cin,)), ("GroupNorm_0", "bias", (cin,)),
          ("Conv_0", "weight", (cout, cin, 3, 3)), ("Conv_0", "bias", (cout,)),
          ("Dense_0", "weight", (cout, temb)), ("Dense_0", "bias", (cout,)),
          ("GroupNorm_1", "weight", (cout,)), ("GroupNorm_1", "bias", (cout,)),
          ("Conv_1", "weight", (cout, cout, 3, 3)), ("Conv_1", "bias", (cout,))]
  if cin != cout or resample:
    keys += [("Conv_2", "weight", (cout, cin, 1, 1)), ("Conv_2", "bias", (cout,))]
  return keys


def ddpm_block(cin, cout, temb=128):
  keys = biggan(cin, cout, temb=temb)[:10]
  if cin != cout:
    keys += [("NIN_0", "W", (cin, cout)), ("NIN_0", "b", (cout,))]
  return keys


def attn(c):
  return [("GroupNorm_0", "weight", (c,)), ("GroupNorm_0", "bias", (c,))] + [
      (f"NIN_{i}", p, s) for i in range(4) for p, s in (("W", (c, c)), ("b", (c,)))]


def top(shape_w, shape_b=None, w="weight"):
  return [(None, w, shape_w)] + ([(None, "bias", shape_b)] if shape_b else [])


# (flax module name, torch submodule keys) per all_modules index.
NCSNPP_TINY = [
    ("GaussianFourierProjection_0", top((32,), w="W")),
    ("Dense_0", top((128, 64), (128,))), ("Dense_1", top((128, 128), (128,))),
    ("Conv_0", top((32, 3, 3, 3), (32,))),
    ("ResnetBlockBigGANpp_0", biggan(32, 32)), ("ResnetBlockBigGANpp_1", biggan(32, 32, True)),
    ("Downsample_0", [("Conv2d_0", "weight", (32, 3, 3, 3)), ("Conv2d_0", "bias", (32,))]),
    ("ResnetBlockBigGANpp_2", biggan(32, 64)), ("AttnBlockpp_0", attn(64)),
    ("ResnetBlockBigGANpp_3", biggan(64, 64)), ("AttnBlockpp_1", attn(64)),
    ("ResnetBlockBigGANpp_4", biggan(64, 64)),
    ("ResnetBlockBigGANpp_5", biggan(128, 64)), ("ResnetBlockBigGANpp_6", biggan(96, 64)),
    ("AttnBlockpp_2", attn(64)), ("ResnetBlockBigGANpp_7", biggan(64, 64, True)),
    ("ResnetBlockBigGANpp_8", biggan(96, 32)), ("ResnetBlockBigGANpp_9", biggan(64, 32)),
    ("GroupNorm_0", top((32,), (32,))), ("Conv_1", top((3, 32, 3, 3), (3,))),
]

DDPM_TINY = [
    ("Dense_0", top((128, 32), (128,))), ("Dense_1", top((128, 128), (128,))),
    ("Conv_0", top((32, 3, 3, 3), (32,))),
    ("ResnetBlockDDPM_0", ddpm_block(32, 32)),
    ("Downsample_0", [("Conv_0", "weight", (32, 32, 3, 3)), ("Conv_0", "bias", (32,))]),
    ("ResnetBlockDDPM_1", ddpm_block(32, 64)), ("AttnBlock_0", attn(64)),
    ("ResnetBlockDDPM_2", ddpm_block(64, 64)), ("AttnBlock_1", attn(64)),
    ("ResnetBlockDDPM_3", ddpm_block(64, 64)),
    ("ResnetBlockDDPM_4", ddpm_block(128, 64)), ("ResnetBlockDDPM_5", ddpm_block(96, 64)),
    ("AttnBlock_2", attn(64)),
    ("Upsample_0", [("Conv_0", "weight", (64, 64, 3, 3)), ("Conv_0", "bias", (64,))]),
    ("ResnetBlockDDPM_6", ddpm_block(96, 32)), ("ResnetBlockDDPM_7", ddpm_block(64, 32)),
    ("GroupNorm_0", top((32,), (32,))), ("Conv_1", top((3, 32, 3, 3), (3,))),
]


def expected_flax_leaf(flax_name, sub, param, value):
  """The documented mapping (docs/models.md), written independently of convert._map_leaf."""
  kind = sub or flax_name
  path = (flax_name,) + ((sub,) if sub else ())
  if kind.startswith("Conv2d_"):
    return path + (param,), value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
  if kind.startswith("Conv_"):
    return (path + ("kernel",), value.transpose(2, 3, 1, 0)) if param == "weight" else (
        path + ("bias",), value)
  if kind.startswith("Dense_"):
    return (path + ("kernel",), value.T) if param == "weight" else (path + ("bias",), value)
  if kind.startswith("GroupNorm_"):
    return path + ({"weight": "scale", "bias": "bias"}[param],), value
  return path + (param,), value  # NIN W [in, out], b; Fourier W


def synthetic_state_dict(layout, rng, prefix="module."):
  state_dict, where = collections.OrderedDict(), {}
  state_dict[prefix + "sigmas"] = np.exp(np.linspace(np.log(50.0), np.log(0.01), 1000))
  for index, (flax_name, keys) in enumerate(layout):
    for sub, param, shape in keys:
      key = f"all_modules.{index}." + (f"{sub}." if sub else "") + param
      value = rng.normal(size=shape).astype(np.float32)
      state_dict[prefix + key] = value
      where[key] = expected_flax_leaf(flax_name, sub, param, value)
  return state_dict, where


def get_leaf(tree, path):
  for k in path:
    tree = tree[k]
  return np.asarray(tree)


def num_params(config):
  model = get_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             jnp.ones((1,)), train=False))
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes["params"]))


@pytest.mark.parametrize("name,layout", [("ncsnpp", NCSNPP_TINY), ("ddpm", DDPM_TINY)])
def test_every_tensor_lands_in_place(name, layout):
  config = tiny_config(name)
  state_dict, where = synthetic_state_dict(layout, np.random.default_rng(0))
  # The hand-written layout has exactly the model's parameter count (plus the sigma buffer).
  assert sum(v.size for k, v in state_dict.items() if not k.endswith("sigmas")) == (
      num_params(config))
  if name == "ncsnpp":
    assert num_params(config) == 754_915
  params = convert.from_pytorch_state_dict(state_dict, **conversion_kwargs(config))
  n_leaves = len(jax.tree_util.tree_leaves(params))
  assert n_leaves == len(where)  # nothing dropped, nothing invented
  for key, (path, value) in where.items():
    np.testing.assert_array_equal(get_leaf(params, path), value, err_msg=key)


def test_unused_and_missing_keys_are_errors():
  config = tiny_config()
  state_dict, _ = synthetic_state_dict(NCSNPP_TINY, np.random.default_rng(0), prefix="")
  extra = dict(state_dict, **{"all_modules.4.Conv_9.weight": np.zeros((1,))})
  with pytest.raises(ValueError, match="Conv_9"):
    convert.from_pytorch_state_dict(extra, **conversion_kwargs(config))
  missing = dict(state_dict)
  del missing["all_modules.8.NIN_3.W"]
  with pytest.raises(ValueError, match="missing.*AttnBlockpp_0/NIN_3/W"):
    convert.from_pytorch_state_dict(missing, **conversion_kwargs(config))
  wrong_sigmas = dict(state_dict, sigmas=state_dict["sigmas"] * 2)
  with pytest.raises(ValueError, match="sigma"):
    convert.from_pytorch_state_dict(wrong_sigmas, **conversion_kwargs(config))
  wrong_config = tiny_config()
  wrong_config.model.nf = 16
  with pytest.raises(ValueError, match="shape"):
    convert.from_pytorch_state_dict(state_dict, **conversion_kwargs(wrong_config))


def test_non_finite_weights_are_refused_and_dtypes_become_the_models():
  config = tiny_config()
  state_dict, _ = synthetic_state_dict(NCSNPP_TINY, np.random.default_rng(0), prefix="")
  wide = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
  params = convert.from_pytorch_state_dict(wide, **conversion_kwargs(config))
  leaves = jax.tree_util.tree_leaves(params)
  assert leaves and all(leaf.dtype == np.float32 for leaf in leaves)
  poisoned = dict(state_dict)
  weight = np.array(poisoned["all_modules.8.NIN_3.W"], np.float32)
  weight.flat[0] = np.nan
  poisoned["all_modules.8.NIN_3.W"] = weight
  with pytest.raises(ValueError, match="AttnBlockpp_0/NIN_3/W holds NaN or infinite values"):
    convert.from_pytorch_state_dict(poisoned, **conversion_kwargs(config))


@pytest.mark.slow
def test_checkpoint_with_ema_and_converted_model_runs():
  config = tiny_config()
  rng = np.random.default_rng(1)
  model_sd, where = synthetic_state_dict(NCSNPP_TINY, rng)
  # EMA shadow params: trainable parameters in registration order (no buffer, no frozen W).
  trainable = [k for k in model_sd if not k.endswith(("sigmas", "all_modules.0.W"))]
  shadow = [v + 1.0 for k, v in model_sd.items() if k in trainable]
  checkpoint = {"model": model_sd, "ema": {"decay": 0.999, "num_updates": 3,
                                           "shadow_params": shadow},
                "step": 7, "optimizer": {}}
  out = convert.from_pytorch_checkpoint(checkpoint, **conversion_kwargs(config))
  for key, (path, value) in where.items():
    offset = 0.0 if key.endswith("all_modules.0.W") else 1.0
    np.testing.assert_allclose(get_leaf(out["ema_params"], path), value + offset, err_msg=key)
    np.testing.assert_array_equal(get_leaf(out["params"], path), value, err_msg=key)
  model = get_model(config)
  x = jnp.full((1, 32, 32, 3), 0.5)
  y = model.apply({"params": out["params"]}, x, jnp.array([1.0]), train=False)
  assert y.shape == x.shape and np.all(np.isfinite(y))


@pytest.mark.slow
def test_torch_zip_reader_and_cli(tmp_path):
  model_sd, where = synthetic_state_dict(NCSNPP_TINY, np.random.default_rng(2))
  model_sd = collections.OrderedDict((k, np.asarray(v, np.float32)) for k, v in model_sd.items())
  model_sd["module.all_modules.4.Conv_0.weight"] = np.asfortranarray(
      model_sd["module.all_modules.4.Conv_0.weight"])  # non-contiguous strides survive
  ckpt = {"model": model_sd, "step": np.asarray([3], np.float32),
          "optimizer": {"param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}}
  pth = str(tmp_path / "checkpoint_8.pth")
  torch_save.save(pth, ckpt)
  loaded = torch_pickle.load_torch_file(pth)
  assert list(loaded["model"]) == list(model_sd)  # order preserved (EMA alignment needs it)
  for k, v in model_sd.items():
    np.testing.assert_array_equal(loaded["model"][k], v)
  assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
  torch_save.save(str(tmp_path / "legacy.pth"), ckpt, legacy=True)
  legacy = torch_pickle.load_torch_file(str(tmp_path / "legacy.pth"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, legacy, loaded)

  config_file = tmp_path / "tiny_config.py"
  config_file.write_text(
      "import sys\nsys.path.insert(0, %r)\nfrom test_convert import experiment_config\n"
      "def get_config():\n  return experiment_config()\n" % os.path.dirname(__file__))
  out = convert_cli.convert_main(["--config", str(config_file), "--source", pth,
                              "--out", str(tmp_path / "orbax")])
  from score_sde.io import checkpointing
  from score_sde.experiment import builders  # pylint: disable=import-outside-toplevel
  ckpts = checkpointing.TrainCheckpoints(out, read_only=True)
  init = builders.get_state_init(experiment_config())
  restored = ckpts.restore_latest(checkpointing.abstract_like(jax.eval_shape(init)))
  for key, (path, value) in where.items():
    np.testing.assert_array_equal(get_leaf(restored.params, path), value, err_msg=key)


def test_cli_names_a_missing_source_file(tmp_path, capsys):
  """A --source that does not exist stops the command with its name, before anything is written."""
  with pytest.raises(SystemExit):
    convert_cli.convert_main(["--config", "configs/ve/cifar10_ncsnpp_continuous.py", "--source",
                              str(tmp_path / "checkpoint_26.pth"), "--out", str(tmp_path / "wd")])
  assert "checkpoint_26.pth' does not exist" in capsys.readouterr().err
  assert not (tmp_path / "wd").exists()


def test_flax_checkpoint_loader(tmp_path):
  config = tiny_config()
  model = get_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             jnp.ones((1,)), train=False))["params"]
  rng = np.random.default_rng(3)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  # Reference-named paths (yang-song/score_sde Flax tree) with HWIO kernels.
  assert params["Downsample_0"]["Conv2d_0"]["weight"].shape == (3, 3, 3, 32)
  assert params["ResnetBlockBigGANpp_1"]["Conv_2"]["kernel"].shape == (1, 1, 32, 32)
  assert params["AttnBlockpp_0"]["NIN_3"]["W"].shape == (64, 64)
  assert params["GaussianFourierProjection_0"]["W"].shape == (32,)
  ema = jax.tree_util.tree_map(lambda a: a + 1, params)
  state = {"step": 5, "optimizer": {"target": params, "state": {"step": 5}}, "lr": 2e-4,
           "model_state": {}, "ema_rate": 0.999, "params_ema": ema, "rng": np.zeros(2, np.uint32)}
  path = tmp_path / "checkpoint_5"
  path.write_bytes(serialization.msgpack_serialize(state))
  out = convert.from_flax_checkpoint(str(path), **conversion_kwargs(config))
  jax.tree_util.tree_map(np.testing.assert_array_equal, out["params"], params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, out["ema_params"], ema)
  bad = dict(state, params_ema={"Conv_0": ema["Conv_0"]})
  path.write_bytes(serialization.msgpack_serialize(bad))
  with pytest.raises(ValueError, match="missing"):
    convert.from_flax_checkpoint(str(path), **conversion_kwargs(config))
