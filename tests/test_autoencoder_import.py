"""SD-VAE import (io/convert.py): LDM/CompVis `.ckpt` and diffusers `.safetensors` files of a tiny
AutoencoderKL, written by the reference code outside this repository (tests/fixtures/README.md),
must reproduce the reference's posterior mean, log-variance and decoder output."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_sde.io import convert, torch_pickle
from score_sde.models.autoencoder import AutoencoderKL

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LDM_FILE = os.path.join(FIXTURES, "sd_vae_tiny_ldm.ckpt")
DIFFUSERS_FILE = os.path.join(FIXTURES, "sd_vae_tiny_diffusers.safetensors")
IMAGE_SIZE = 16

# Both fixtures: ch 32, ch_mult (1, 2), 1 res block, z 4, embed 4, 32 groups. The LDM one has
# attention at the 8×8 level (down and up path); diffusers' DownEncoderBlock2D/UpDecoderBlock2D have
# attention only in the middle block.
MODELS = {
    "ldm": AutoencoderKL(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                         z_channels=4, embed_dim=4),
    "diffusers": AutoencoderKL(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1,
                               attn_resolutions=(), z_channels=4, embed_dim=4),
}
FILES = {"ldm": LDM_FILE, "diffusers": DIFFUSERS_FILE}

# Tolerance: the weights are identical (float16 values, widened to float32 on both sides) and both
# sides compute in float32, so only the summation order differs (XLA's vs oneDNN's convolutions,
# attention softmax): float32 rounding (eps 1.2e-7) accumulated over ~15 layers of up to 576-term
# sums gives at most ~6e-6 here on outputs of magnitude ~1-2. 5e-5 leaves ~10x margin, while a
# wrong mapping (a transposed kernel, swapped q/k, a mis-ordered up block) changes outputs by O(0.1).
ATOL, RTOL = 5e-5, 1e-5


def convert_file(layout, state_dict=None):
  state_dict = convert.load_state_dict_file(FILES[layout]) if state_dict is None else state_dict
  return convert.from_pytorch_state_dict(state_dict, MODELS[layout], image_size=IMAGE_SIZE,
                                         num_channels=3)


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(os.path.join(FIXTURES, "sd_vae_tiny.npz")))


@pytest.fixture(scope="module")
def converted():
  return {layout: convert_file(layout) for layout in MODELS}


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_parity_with_reference(layout, reference, converted):
  model, params = MODELS[layout], converted[layout]
  # Jitted: each whole program compiles once and lands in the persistent compilation cache
  # (tests/conftest.py), so later runs skip the compilation.
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
  mean, logvar = encode(params, jnp.asarray(reference["x"]))
  decoded = decode(params, jnp.asarray(reference[f"{layout}_mean"]))
  np.testing.assert_allclose(mean, reference[f"{layout}_mean"], atol=ATOL, rtol=RTOL)
  np.testing.assert_allclose(logvar, reference[f"{layout}_logvar"], atol=ATOL, rtol=RTOL)
  np.testing.assert_allclose(decoded, reference[f"{layout}_decode"], atol=ATOL, rtol=RTOL)


def test_whole_sd_checkpoint_and_bare_vae_state_dict_agree(converted):
  """The fixture is a whole-checkpoint layout ({'state_dict': first_stage_model.* plus UNet, text
  encoder and loss.* keys}); the bare VAE state dict gives the same parameters."""
  full = convert.load_state_dict_file(LDM_FILE)
  assert any(k.startswith("model.diffusion_model.") for k in full)
  assert any(k.startswith("first_stage_model.loss.") for k in full)
  bare = {k[len("first_stage_model."):]: v for k, v in full.items()
          if k.startswith("first_stage_model.") and not k.startswith("first_stage_model.loss.")}
  params = convert_file("ldm", bare)
  assert jax.tree.all(jax.tree.map(np.array_equal, params, converted["ldm"]))
  # A bare VAE training checkpoint keeps its loss.* entries: dropped as well.
  params = convert_file("ldm", {**bare, "loss.logvar": np.zeros(())})
  assert jax.tree.all(jax.tree.map(np.array_equal, params, converted["ldm"]))


def test_lightning_objects_of_a_ckpt_are_read_as_inert_placeholders():
  """Like SD's released .ckpt files, the fixture pickles a pytorch_lightning ModelCheckpoint and
  NumPy scalars: the strict reader refuses them, load_state_dict_file reads them as placeholders."""
  with pytest.raises(pickle.UnpicklingError, match="pytorch_lightning"):
    torch_pickle.load_torch_file(LDM_FILE)
  ckpt = torch_pickle.load_torch_file(LDM_FILE, opaque_globals=True)
  callback = ckpt["checkpoint_callback_best"]
  assert isinstance(callback, torch_pickle.OpaqueObject)
  assert callback.global_name == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
  assert callback.state["monitor"] == "val/rec_loss"
  assert set(convert.load_state_dict_file(LDM_FILE)) == set(ckpt["state_dict"])


def test_old_diffusers_attention_names(converted):
  """diffusers files from before 0.14 name the attention query/key/value/proj_attn."""
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  sd = {}
  for k, v in convert.load_state_dict_file(DIFFUSERS_FILE).items():
    for new, previous in old.items():
      k = k.replace(f".{new}.", f".{previous}.")
    sd[k] = v
  assert any(".proj_attn." in k for k in sd)
  params = convert_file("diffusers", sd)
  assert jax.tree.all(jax.tree.map(np.array_equal, params, converted["diffusers"]))


def test_sd_vae_parameter_count():
  """The SD-VAE configuration has diffusers' AutoencoderKL count for SD (83,653,863)."""
  model = AutoencoderKL(ch=128, out_ch=3, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                        attn_resolutions=(), z_channels=4, embed_dim=4)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             sample_posterior=False))
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"])) == 83_653_863


def test_missing_key_names_it_and_the_layout():
  sd = convert.load_state_dict_file(LDM_FILE)
  del sd["first_stage_model.decoder.up.1.attn.0.q.weight"]
  with pytest.raises(ValueError, match=r"LDM layout.*decoder/up_1_attn_0/q/kernel"):
    convert_file("ldm", sd)


def test_wrong_shape_names_the_key_and_the_layout():
  sd = convert.load_state_dict_file(DIFFUSERS_FILE)
  key = "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"
  sd[key] = sd[key][:, :16]
  with pytest.raises(ValueError, match=rf"diffusers layout.*{key}.*\(1, 1, 16, 64\).*"
                                       r"\(1, 1, 32, 64\)"):
    convert_file("diffusers", sd)


def test_unexpected_key_and_mismatched_model():
  sd = convert.load_state_dict_file(DIFFUSERS_FILE)
  # A stray attention tensor (the model has no attention at 16×16) is named.
  with pytest.raises(ValueError, match=r"diffusers layout.*unexpected keys.*to_k"):
    convert.from_pytorch_state_dict(
        {**sd, "encoder.down_blocks.0.attentions.0.to_k.weight": np.zeros((32, 32), np.float16)},
        MODELS["diffusers"], image_size=IMAGE_SIZE, num_channels=3)
  # The diffusers fixture against a model with attention at 8×8: the missing tensors are named.
  with pytest.raises(ValueError, match=r"diffusers layout.*no key.*up_1_attn_0"):
    convert.from_pytorch_state_dict(sd, MODELS["ldm"], image_size=IMAGE_SIZE, num_channels=3)


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
    convert.load_state_dict_file(tmp_path / "nowhere.safetensors")
  bad = tmp_path / "corrupt.safetensors"
  bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
  with pytest.raises(ValueError, match="corrupt.safetensors"):
    convert.load_state_dict_file(bad)
  truncated = tmp_path / "truncated.ckpt"
  with open(LDM_FILE, "rb") as f:
    truncated.write_bytes(f.read()[: 100_000])
  with pytest.raises(ValueError, match="truncated.ckpt"):
    convert.load_state_dict_file(truncated)
  unknown = tmp_path / "weights.h5"
  unknown.write_bytes(b"")
  with pytest.raises(ValueError, match="weights.h5"):
    convert.load_state_dict_file(unknown)
