"""Latent diffusion end to end on the digits: a short autoencoder run reconstructs held-out digits,
its latent scale factor is stored and used, a latent DiT trains, samples and is evaluated on decoded
images; the loss on latents is the pixel loss of the scaled encodings; and what latent diffusion
does not offer is refused with one line."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.digits import autoencoder as digits_autoencoder
from configs.digits import latent_dit
from score_sde.experiment import autoencoder, builders, evaluation, latent, train
from score_sde.io import datasets

AE_STEPS = 150


def tiny_autoencoder_config():
  config = digits_autoencoder.get_config()
  config.autoencoder.update(ch=8, ch_mult=(1, 2), num_groups=4, batch_size=16, n_iters=AE_STEPS,
                            lr=2e-3, log_freq=50, eval_freq=AE_STEPS, snapshot_freq=AE_STEPS,
                            snapshot_freq_for_preemption=0, num_recon=4, scale_num_images=64)
  return config


def tiny_latent_config(ae_workdir):
  config = latent_dit.get_config()
  config.latent.autoencoder_workdir = str(ae_workdir)
  config.model.update(hidden_size=16, depth=1, num_heads=2, num_scales=8)
  config.training.update(batch_size=8, n_iters=4, snapshot_freq=4, snapshot_freq_for_preemption=0,
                         log_freq=2, eval_freq=4, snapshot_num_samples=4)
  config.eval.update(batch_size=16, num_samples=16)
  return config


@pytest.fixture(scope="module")
def ae_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("digits_ae")
  autoencoder.train_autoencoder(tiny_autoencoder_config(), str(workdir))
  return workdir


@pytest.mark.slow
def test_autoencoder_round_trip_after_a_short_run(ae_workdir):
  """Reconstructions of the held-out digits from the posterior mean beat the best constant image
  (the training mean) by far: a network that learnt nothing cannot."""
  out_dir = os.path.join(ae_workdir, "autoencoder")
  spec = autoencoder.read_spec(out_dir)
  space = latent.load_latent_space(str(ae_workdir), 0.0, image_size=16, num_channels=1,
                                   centered=True, replicated=None)
  test, _ = datasets.digits_split("test", 16)
  train_images, _ = datasets.digits_split("train", 16)
  x = test.astype(np.float32) / 255.0 * 2 - 1
  x_hat = np.asarray(jax.jit(autoencoder.reconstruct_fn(spec))(space.params, jnp.asarray(x)))
  error = np.mean(np.abs(x_hat - x))
  baseline = np.mean(np.abs(train_images.astype(np.float32).mean(0) / 255.0 * 2 - 1 - x))
  assert error < 0.35 * baseline, (error, baseline)
  assert os.path.isfile(os.path.join(out_dir, "recon", f"iter_{AE_STEPS}.png"))
  stored = json.load(open(os.path.join(out_dir, autoencoder.SCALE_FILE)))
  assert stored["step"] == AE_STEPS and stored["num_images"] == 64
  assert space.scale_factor == stored["scale_factor"] > 0
  assert space.shape == (8, 8, 2)


@pytest.mark.slow
def test_latent_dit_trains_samples_and_evaluates_on_decoded_images(ae_workdir, tmp_path):
  config = tiny_latent_config(ae_workdir)
  state = train.train(config, str(tmp_path))
  assert int(state.step) == 4
  # The score network sees 8x8x2 latents: DiT's patch embedding takes 2x2x2 patches.
  assert state.params["x_embedder"]["kernel"].shape[0] == 2 * 2 * 2
  assert os.path.isfile(tmp_path / "samples" / "iter_4.png")
  reports = evaluation.evaluate(config, str(tmp_path))
  report = reports[4]
  assert "bpd" not in report and np.isfinite(report["eval_loss"])
  assert np.isfinite(report["fdd"]["value"]) and report["fdd"]["num_samples"] == 16
  assert report["class_accuracy"]["guidance"] == "cfg"
  shard = np.load(tmp_path / "eval" / "ckpt_1" / "samples_0.npz")
  assert shard["samples"].shape == (16, 16, 16, 1)  # decoded digits, not latents
  spec = json.load(open(tmp_path / "eval" / "ckpt_1" / "sampling.json"))
  assert spec["latent"]["autoencoder_step"] == AE_STEPS


@pytest.mark.slow  # compiles the encoder and decoder (~8 s)
def test_the_latent_loss_is_the_loss_of_the_scaled_encodings():
  """`_encoding_loss` draws z ~ q(z | x) with the first half of its key, scales it and hands it to
  the objective with the second half: the same number as calling the objective on those latents."""
  spec = autoencoder.spec_from_fields(
      dict(ch=8, out_ch=1, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], z_channels=2,
           embed_dim=2, num_groups=4, dropout=0.0), None,
      datasets.DataSpec(dataset="digits", image_size=16, num_channels=1), True)
  model, _ = autoencoder.build_modules(spec)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)),
                          jax.random.PRNGKey(0))["params"]
  params = jax.tree.map(lambda s: 0.1 * jnp.ones(s.shape, s.dtype), shapes)
  space = latent.LatentSpace(spec=spec, params=params, scale_factor=0.7, shape=(8, 8, 2),
                             workdir="ae", step=0)

  def objective(net_params, key, z, class_labels=None):
    return jnp.sum(z * net_params), {"z": z, "key": key}

  images = jnp.linspace(-1, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
  key = jax.random.PRNGKey(5)
  loss, seen = jax.jit(builders._encoding_loss(objective, space))(2.0, key, images)
  encode_key, objective_key = jax.random.split(key)
  z, decoded = jax.jit(lambda: (0.7 * autoencoder.encode_fn(spec)(params, encode_key, images),
                                space.decode(seen["z"])))()
  np.testing.assert_allclose(seen["z"], z, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(seen["key"], objective_key)
  assert float(loss) == pytest.approx(float(jnp.sum(2.0 * z)), rel=1e-6)
  np.testing.assert_allclose(
      decoded, jax.jit(autoencoder.decode_fn(spec))(params, seen["z"] / 0.7), rtol=1e-5, atol=1e-6)


def _fake_autoencoder_run(workdir, image_size=16, scale_step=None):
  """An autoencoder work directory with its spec (and optionally a scale file), no checkpoint."""
  config = tiny_autoencoder_config()
  config.data.image_size = image_size
  spec = builders.get_autoencoder_options(config).spec
  out_dir = os.path.join(workdir, "autoencoder")
  os.makedirs(out_dir)
  json.dump(spec, open(os.path.join(out_dir, autoencoder.SPEC_FILE), "w"))
  if scale_step is not None:
    json.dump({"step": scale_step, "scale_factor": 0.5},
              open(os.path.join(out_dir, autoencoder.SCALE_FILE), "w"))
  return out_dir


def test_latent_configs_refuse_what_latent_diffusion_lacks(tmp_path):
  _fake_autoencoder_run(tmp_path)
  config = tiny_latent_config(tmp_path)
  config.eval.enable_bpd = True
  with pytest.raises(ValueError, match="enable_bpd=True is not available in latent diffusion"):
    builders.check_config(config)
  config.eval.enable_bpd = False
  config.sampling.guidance = "classifier"
  with pytest.raises(ValueError, match="guidance='classifier' is not available in latent"):
    builders.check_config(config)
  config.sampling.guidance = "cfg"
  config.model.patch_size = 3
  with pytest.raises(ValueError, match="the latent size 8 .* divisible by config.model.patch_size=3"):
    builders.check_config(config)


def test_a_missing_or_mismatched_autoencoder_is_named(tmp_path):
  config = tiny_latent_config(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="holds no autoencoder.*--mode train_autoencoder"):
    builders.check_config(config)
  _fake_autoencoder_run(tmp_path / "ae8", image_size=8)
  with pytest.raises(ValueError, match="trained on images .*'image_size': 8"):
    latent.load_latent_space(str(tmp_path / "ae8"), 0.0, image_size=16, num_channels=1,
                             centered=True, replicated=None)
  _fake_autoencoder_run(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no autoencoder checkpoint"):
    latent.load_latent_space(str(tmp_path / "empty"), 0.0, image_size=16, num_channels=1,
                             centered=True, replicated=None)


def test_a_stale_scale_factor_is_refused(tmp_path):
  out_dir = _fake_autoencoder_run(tmp_path, scale_step=100)
  with pytest.raises(ValueError, match="is for step 100, but the newest autoencoder checkpoint is "
                                       "step 150.*config.latent.scale_factor"):
    latent._stored_scale_factor(out_dir, 150)
  assert latent._stored_scale_factor(out_dir, 100) == 0.5


def test_resuming_an_autoencoder_run_with_other_settings_is_refused(tmp_path):
  out_dir = _fake_autoencoder_run(tmp_path)
  spec = builders.get_autoencoder_options(tiny_autoencoder_config()).spec
  autoencoder._write_or_check_spec(out_dir, spec)  # the same settings: accepted
  spec["model"]["ch"] = 16
  with pytest.raises(ValueError, match="describes another autoencoder"):
    autoencoder._write_or_check_spec(out_dir, spec)
