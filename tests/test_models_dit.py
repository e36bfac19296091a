"""DiT (score_sde/models/dit.py): parameter counts and output parity with facebookresearch/DiT,
adaLN-Zero, patchify, the null class, bf16 compute, and DiT through training, sampling and sharding."""
import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import architectures
from score_sde.experiment import builders, cli, config_files, convert_cli, evaluation, generate, train
from score_sde.io import checkpointing, convert, torch_pickle
from score_sde.models import dit as dit_lib
from score_sde.models.dit import DiT
from score_sde.samplers import SAMPLERS
from tests.helpers import torch_save
from tests.helpers.subprocess_env import cpu_env
from tests.helpers.tiny_config import tiny_dit_config
from tests.test_sampler_configs import FAST_OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "dit_small")

# Trainable parameters of the reference at 32x32x4 latents, 1000 classes, learn_sigma=True,
# class_dropout_prob=0.1 (the paper's ImageNet-256 setting; pos_embed frozen, not counted).
# Source: facebookresearch/DiT models.py (commit of the fetched snapshot), run with torch 2.13.0
# CPU and a stand-in for timm's PatchEmbed/Attention/Mlp (timm 1.0.31 imports torchvision):
#   for name, ctor in DiT_models.items():
#     m = ctor(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)
#     print(name, sum(p.numel() for p in m.parameters() if p.requires_grad))
REFERENCE_COUNTS = {
    ("XL", 2): 674_834_720, ("XL", 4): 675_000_704, ("XL", 8): 675_664_640,
    ("L", 2): 457_840_672, ("L", 4): 457_988_224, ("L", 8): 458_578_432,
    ("B", 2): 130_315_808, ("B", 4): 130_426_496, ("B", 8): 130_869_248,
    ("S", 2): 32_865_056, ("S", 4): 32_920_448, ("S", 8): 33_142_016,
}


def _preset_model(size, patch_size, **fields):
  f = architectures.dit(size, patch_size)
  return DiT(patch_size=f["patch_size"], hidden_size=f["hidden_size"], depth=f["depth"],
             num_heads=f["num_heads"], mlp_ratio=f["mlp_ratio"], learn_sigma=f["learn_sigma"],
             **fields)


def _init(model, shape, num_classes=0, key=0):
  kw = {"class_labels": jnp.full(shape[:1], num_classes, jnp.int32)} if num_classes else {}
  return jax.jit(lambda: model.init(jax.random.PRNGKey(key), jnp.zeros(shape), jnp.ones(shape[:1]),
                                    train=False, **kw)["params"])()


def _apply(model, params, x, labels, class_labels=None, train=False):
  """The network, compiled once (faster than op-by-op dispatch)."""
  kw = {} if class_labels is None else {"class_labels": class_labels}
  return jax.jit(functools.partial(model.apply, train=train))({"params": params}, x, labels, **kw)


def _perturb(params, seed, std=0.1):
  """params + N(0, std²) noise, so the zero-initialised layers act."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return tree.unflatten([np.asarray(p) + std * rng.standard_normal(p.shape, np.float32)
                        for p in leaves])


@pytest.mark.parametrize("size,patch_size", sorted(REFERENCE_COUNTS))
def test_preset_parameter_counts_match_the_reference(size, patch_size):
  model = _preset_model(size, patch_size, num_classes=1000)
  shapes = jax.eval_shape(lambda: _init(model, (1, 32, 32, 4), num_classes=1000))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))
  assert count == REFERENCE_COUNTS[(size, patch_size)]


def _fixture_model(**fields):
  return DiT(patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10,
             learn_sigma=True, **fields)


def test_reference_checkpoint_gives_the_reference_output():
  """tests/fixtures/dit_small: the reference DiT (depth 2, hidden 32, 4 heads, patch 2, 8x8x4,
  10 classes, learn_sigma) with every weight perturbed, so the zero-initialised layers matter."""
  state_dict = torch_pickle.load_torch_state_dict(FIXTURE + ".pth")
  data = np.load(FIXTURE + ".npz")
  model = _fixture_model(return_sigma=True)
  params = convert.from_pytorch_state_dict(state_dict, model, image_size=8, num_channels=4)
  x = jnp.asarray(data["x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  out = _apply(model, params, x, jnp.asarray(data["t"]), jnp.asarray(data["y"], jnp.int32))
  want = data["out"].transpose(0, 2, 3, 1)  # [N, H, W, 2C]
  assert out.shape == want.shape == (4, 8, 8, 8)
  # Outputs are O(1) (max |out| ~2.3); float32 rounding over two blocks is ~1e-6.
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-5, rtol=0)
  # Without return_sigma the network gives the first C channels, what the score parametrisations read.
  eps = _apply(_fixture_model(), params, x, jnp.asarray(data["t"]),
               jnp.asarray(data["y"], jnp.int32))
  np.testing.assert_array_equal(np.asarray(eps), np.asarray(out)[..., :4])


def test_checkpoint_import_is_strict():
  state_dict = torch_pickle.load_torch_state_dict(FIXTURE + ".pth")
  model = _fixture_model()
  kw = dict(image_size=8, num_channels=4)
  missing = {k: v for k, v in state_dict.items() if k != "blocks.1.mlp.fc2.bias"}
  with pytest.raises(ValueError, match="missing"):
    convert.from_pytorch_state_dict(missing, model, **kw)
  with pytest.raises(ValueError, match="Unused keys"):
    convert.from_pytorch_state_dict(dict(state_dict, extra=np.zeros(3)), model, **kw)
  wrong_pos = dict(state_dict, pos_embed=state_dict["pos_embed"] + 1e-3)
  with pytest.raises(ValueError, match="pos_embed"):
    convert.from_pytorch_state_dict(wrong_pos, model, **kw)
  with pytest.raises(ValueError, match="pos_embed"):  # the embedding of another input size
    convert.from_pytorch_state_dict(state_dict, _fixture_model(), image_size=16, num_channels=4)


def test_dit_training_checkpoint_gives_params_and_ema(tmp_path):
  """A facebookresearch/DiT train.py checkpoint {'model', 'ema', 'opt', 'args'} (saved by our
  torch-free writer), with `module.` prefixes of DDP."""
  state_dict = torch_pickle.load_torch_state_dict(FIXTURE + ".pth")
  ema = {k: v * 0.5 for k, v in state_dict.items() if k != "pos_embed"}
  path = tmp_path / "0001000.pt"
  torch_save.save(str(path), {"model": {"module." + k: v for k, v in state_dict.items()},
                              "ema": ema, "opt": {}})
  out = convert.from_pytorch_checkpoint(torch_pickle.load_torch_file(str(path)), _fixture_model(),
                                        image_size=8, num_channels=4)
  np.testing.assert_array_equal(out["params"]["final_linear"]["bias"],
                                state_dict["final_layer.linear.bias"])
  np.testing.assert_array_equal(out["ema_params"]["blocks_1"]["attn"]["qkv"]["kernel"],
                                state_dict["blocks.1.attn.qkv.weight"].T * 0.5)


def test_released_dit_file_is_a_bare_ema_state_dict():
  state_dict = torch_pickle.load_torch_state_dict(FIXTURE + ".pth")
  out = convert.from_pytorch_checkpoint(state_dict, _fixture_model(), image_size=8, num_channels=4)
  np.testing.assert_array_equal(out["ema_params"]["y_embedder"]["embedding"],
                                state_dict["y_embedder.embedding_table.weight"])
  jax.tree.map(np.testing.assert_array_equal, out["params"], out["ema_params"])


FIXTURE_CONFIG = """
from tests.helpers.tiny_config import tiny_dit_config

def get_config():
  config = tiny_dit_config()
  config.data.num_channels = 4
  config.model.update(hidden_size=32, depth=2, num_heads=4, learn_sigma=True)
  return config
"""


@pytest.mark.slow
def test_convert_cli_writes_a_workdir_from_a_released_dit_file(tmp_path):
  """score-sde-convert on a bare DiT state dict (the released files' layout): the work directory's
  EMA parameters give the reference's output."""
  config_file = tmp_path / "dit_fixture.py"
  config_file.write_text(FIXTURE_CONFIG)
  out = convert_cli.convert_main(["--config", str(config_file), "--source", FIXTURE + ".pth",
                                  "--out", str(tmp_path / "wd")])
  config = config_files.load_config_file(str(config_file), "--config")
  ckpts = checkpointing.TrainCheckpoints(out, read_only=True)
  init = builders.get_state_init(config)
  state = ckpts.restore_latest(checkpointing.abstract_like(jax.eval_shape(init)))
  data = np.load(FIXTURE + ".npz")
  got = _apply(_fixture_model(return_sigma=True), state.ema_params,
               jnp.asarray(data["x"].transpose(0, 2, 3, 1)), jnp.asarray(data["t"]),
               jnp.asarray(data["y"], jnp.int32))
  np.testing.assert_allclose(np.asarray(got), data["out"].transpose(0, 2, 3, 1), atol=1e-5, rtol=0)


def test_pos_embed_is_a_constant_not_a_parameter():
  model = DiT(patch_size=2, hidden_size=32, depth=1, num_heads=4)
  params = _init(model, (1, 8, 8, 3))
  assert "pos_embed" not in str(jax.tree_util.tree_structure(params))
  pos = dit_lib.sincos_pos_embed_2d(32, 4, 4)
  assert pos.shape == (16, 32)
  # Token 5 is row 1, column 1 of the 4x4 grid; channels [0, 8) are sin(column ω_k).
  np.testing.assert_allclose(pos[5, :8], np.sin(1.0 / 10000 ** (np.arange(8) / 8)), rtol=1e-6)


def test_adaln_zero_output_is_exactly_zero_at_initialisation():
  model = DiT(patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10, learn_sigma=True)
  params = _init(model, (2, 8, 8, 3), num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  out = _apply(model, params, x, jnp.array([3.0, 999.0]), jnp.array([1, 10]), train=True)
  assert out.shape == (2, 8, 8, 3)  # learn_sigma: the first C of 2C channels
  assert np.all(np.asarray(out) == 0.0)


@pytest.mark.parametrize("shape,p", [((2, 8, 8, 3), 2), ((1, 16, 8, 1), 4), ((3, 4, 4, 2), 1)])
def test_patchify_unpatchify_round_trip(shape, p):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  tokens = dit_lib.patchify(x, p)
  assert tokens.shape == (shape[0], shape[1] * shape[2] // p**2, p * p * shape[3])
  np.testing.assert_array_equal(dit_lib.unpatchify(tokens, p, shape[1], shape[2]), x)
  # Token i*(W/p)+j holds the patch at row i, column j.
  np.testing.assert_array_equal(tokens[:, 1].reshape(shape[0], p, p, shape[3]), x[:, :p, p:2 * p])


def test_null_class_and_noise_labels_of_every_parametrisation():
  model = DiT(patch_size=2, hidden_size=32, depth=1, num_heads=4, num_classes=10)
  params = _perturb(_init(model, (1, 8, 8, 1), num_classes=10), seed=2)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 8, 8, 1))
  # VP 999 t, VE σ, EDM/consistency ln(σ)/4 (negative).
  labels = jnp.array([999.0 * 0.3, 25.0, jnp.log(0.002) / 4, 0.0])

  def apply(y):
    return np.asarray(_apply(model, params, x, labels, jnp.full((4,), y, jnp.int32)))

  null, three = apply(10), apply(3)
  assert np.all(np.isfinite(null)) and np.all(np.isfinite(three))
  assert np.abs(null - three).max() > 1e-3
  with pytest.raises(ValueError, match="class-conditional"):
    model.apply({"params": params}, x, labels, train=False)


def test_bf16_compute_keeps_float32_parameters():
  fields = dict(patch_size=2, hidden_size=32, depth=2, num_heads=4)
  params = _perturb(_init(DiT(**fields), (2, 8, 8, 3)), seed=4)
  model = DiT(**fields, dtype=jnp.bfloat16)
  init = _init(model, (2, 8, 8, 3))
  assert {p.dtype for p in jax.tree.leaves(init)} == {jnp.dtype(jnp.float32)}
  x = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
  labels = jnp.array([10.0, 500.0])
  out = _apply(model, params, x, labels)
  ref = _apply(DiT(**fields), params, x, labels)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=0.1 * float(jnp.abs(ref).max()))
  assert not np.array_equal(np.asarray(out), np.asarray(ref))  # really computed in bf16


def test_invalid_fields_fail_early():
  with pytest.raises(ValueError, match="divisible by patch_size"):
    _init(DiT(patch_size=4, hidden_size=32, depth=1, num_heads=4), (1, 6, 6, 1))
  with pytest.raises(ValueError, match="num_heads"):
    _init(DiT(patch_size=2, hidden_size=32, depth=1, num_heads=3), (1, 8, 8, 1))
  config = tiny_dit_config()
  config.model.patch_size = 3
  with pytest.raises(ValueError, match="patch_size"):
    builders.check_config(config)


@pytest.mark.slow
def test_tiny_dit_trains_from_a_config_and_samples_with_guidance(tmp_path):
  config = tiny_dit_config()
  config.training.n_iters = 2
  config.training.snapshot_freq = 2
  config.eval.num_samples = 4
  config.eval.batch_size = 4
  workdir = str(tmp_path)
  state = train.train(config, workdir)
  assert int(state.step) == 2
  assert "y_embedder" in state.params
  grid = generate.sample(config, workdir)  # PC (Euler-Maruyama) with classifier-free guidance
  with np.load(os.path.join(os.path.dirname(grid), "samples_0.npz")) as shard:
    assert shard["samples"].shape == (4, 8, 8, 1) and shard["samples"].std() > 0
    np.testing.assert_array_equal(shard["labels"], [0, 1, 2, 3])  # labels cycle through classes


@pytest.fixture(scope="module")
def trained_dit(tmp_path_factory):
  """Unconditional tiny DiTs trained 2 steps on VP (DSM) and VE."""
  workdirs = {}
  for sde in ("vpsde", "vesde"):
    workdirs[sde] = str(tmp_path_factory.mktemp(f"dit_{sde}"))
    train.train(_unguided_config(sde), workdirs[sde])
  return workdirs


def _unguided_config(sde, **sampling):
  config = tiny_dit_config()
  config.model.num_classes = 0
  config.sampling.guidance = "none"
  config.training.sde = sde
  config.training.n_iters = 2
  config.training.snapshot_freq = 2
  config.eval.num_samples = 4
  config.eval.batch_size = 4
  config.sampling.update(sampling)
  return config


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_every_sampler_runs_a_dit_from_the_config(trained_dit, method):
  sde = "vesde" if method == "ald" else "vpsde"  # annealed Langevin anneals VE noise levels
  config = _unguided_config(sde, method=method, **FAST_OPTIONS[method])
  grid = cli.MODES["sample"](config, trained_dit[sde])
  with np.load(os.path.join(os.path.dirname(grid), "samples_0.npz")) as shard:
    assert shard["samples"].shape == (4, 8, 8, 1) and shard["samples"].std() > 0


@pytest.mark.slow
def test_dit_evaluates_loss_likelihood_and_fdd(trained_dit):
  config = _unguided_config("vpsde")
  config.eval.begin_ckpt = config.eval.end_ckpt = 1
  config.eval.bpd_num_repeats = 1
  config.eval.bpd_rtol = config.eval.bpd_atol = 1e-2
  report = evaluation.evaluate(config, trained_dit["vpsde"])[2]
  assert math.isfinite(report["eval_loss"]) and 0 < report["bpd"] < 30
  assert report["fdd"]["num_samples"] == 4


def _train_dit(out, workdir, n_devices):
  cmd = [sys.executable, "-m", "tests.helpers.train_worker", str(out), str(workdir), "4", "--dit"]
  result = subprocess.run(cmd, env=cpu_env(n_devices), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return np.load(out)


@pytest.mark.slow
def test_dit_on_four_devices_matches_one(tmp_path):
  one = _train_dit(tmp_path / "one.npz", tmp_path / "wd1", 1)
  four = _train_dit(tmp_path / "four.npz", tmp_path / "wd4", 4)
  assert int(four["n_devices"]) == 4 and int(one["n_devices"]) == 1
  # Same noise, labels and data on any device count; only reduction order differs.
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-4)
  names = [k for k in one.files if k.startswith("[")]
  assert names and any("blocks_0" in k for k in names)
  for k in names:
    np.testing.assert_allclose(four[k], one[k], rtol=1e-3, atol=1e-5, err_msg=k)
