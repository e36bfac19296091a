"""The KL autoencoder of latent diffusion: the posterior and its KL term against closed forms and
quadrature, the LDM objective's pieces (adaptive weight, discriminator schedule, hinge loss) against
their definitions, the scale factor, and the PatchGAN's parameter count."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.digits import autoencoder as digits_autoencoder
from score_sde.experiment import autoencoder, builders
from score_sde.models.autoencoder import (AutoencoderKL, kl_to_standard_normal, posterior_sample)
from score_sde.models.patch_discriminator import NLayerDiscriminator


def tiny_config(**autoencoder_fields):
  config = digits_autoencoder.get_config()
  config.autoencoder.update({**dict(ch=8, ch_mult=(1, 2), num_groups=4, z_channels=2, embed_dim=2,
                                    disc_ndf=8, batch_size=8), **autoencoder_fields})
  return config


def random_params(shapes, seed=0):
  """Parameters of the given shapes without running (and compiling) the initialisers, which costs
  ~15 s per model on these CPUs: N(0, 1/fan_in) kernels, N(1, 0.1) norm scales, N(0, 0.1) biases."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape), jnp.float32)
    if name == "scale":
      return jnp.asarray(rng.normal(1, 0.1, s.shape), jnp.float32)
    return jnp.asarray(rng.normal(0, 0.1, s.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def random_state(spec, optimizer, seed=0):
  shapes = jax.eval_shape(lambda: autoencoder.init_state(jax.random.PRNGKey(0), spec, optimizer))
  params = {"autoencoder": random_params(shapes.params["autoencoder"], seed),
            "logvar": jnp.zeros((), jnp.float32)}
  disc_params = random_params(shapes.disc_params, seed + 1)
  return autoencoder.AutoencoderState(step=jnp.zeros((), jnp.int32), params=params,
                                      opt_state=optimizer.init(params), disc_params=disc_params,
                                      disc_opt_state=optimizer.init(disc_params))


def test_kl_term_equals_quadrature_of_its_definition(x64):
  """KL(q ‖ p) = ∫ q log(q / p), by the trapezoid rule on a fine grid, per coordinate; the sum over
  coordinates is the KL of the product (diagonal) Gaussian."""
  mean = jnp.array([[0.0, 1.5, -0.7]], jnp.float64)
  logvar = jnp.array([[0.0, -2.0, 1.2]], jnp.float64)
  z = np.linspace(-30, 30, 200001)
  total = 0.0
  for m, lv in zip(np.asarray(mean[0]), np.asarray(logvar[0])):
    log_q = -0.5 * (np.log(2 * np.pi) + lv + (z - m) ** 2 / np.exp(lv))
    log_p = -0.5 * (np.log(2 * np.pi) + z**2)
    total += np.trapezoid(np.exp(log_q) * (log_q - log_p), z)
  np.testing.assert_allclose(kl_to_standard_normal(mean, logvar), [total], rtol=1e-9)
  assert float(kl_to_standard_normal(jnp.zeros((1, 4)), jnp.zeros((1, 4)))[0]) == 0.0


def test_posterior_draws_have_the_posterior_moments():
  mean = jnp.full((20000, 2), jnp.array([0.5, -1.0]))
  logvar = jnp.full((20000, 2), jnp.log(jnp.array([0.25, 4.0])))
  z = np.asarray(posterior_sample(jax.random.PRNGKey(0), mean, logvar))
  # Standard errors: sd/sqrt(n) = 0.0035 and 0.014 for the means; the tolerances are ~4 of them.
  np.testing.assert_allclose(z.mean(0), [0.5, -1.0], atol=0.06)
  np.testing.assert_allclose(z.var(0), [0.25, 4.0], rtol=0.05)


def test_encoder_shapes_and_logvar_clamp():
  model = AutoencoderKL(ch=8, out_ch=1, ch_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(8,), z_channels=3, embed_dim=3, num_groups=4)
  x = jnp.ones((2, 16, 16, 1))
  variables = {"params": random_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), x,
                                                       jax.random.PRNGKey(1))["params"])}
  encode = jax.jit(lambda v, x: model.apply(v, x, method=AutoencoderKL.encode))
  mean, logvar = encode(variables, x)
  assert mean.shape == logvar.shape == (2, 4, 4, 3)
  assert jax.eval_shape(lambda v, z: model.apply(v, z, method=AutoencoderKL.decode), variables,
                        mean).shape == (2, 16, 16, 1)
  encoder = variables["params"]["encoder"]
  assert "down_1_attn_0" in encoder and "down_0_attn_0" not in encoder  # attention at 8x8 only
  params = jax.tree.map(lambda a: a, variables["params"])
  params["quant_conv"]["bias"] = params["quant_conv"]["bias"].at[3:].set(1e3)  # log-variance half
  _, logvar = encode({"params": params}, x)
  assert float(logvar.max()) == 20.0


def test_patch_discriminator_parameter_count_and_output():
  """taming's NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3): convs 3->64 (bias), 64->128,
  128->256, 256->512 (no bias, each with a BatchNorm weight and bias), 512->1 (bias), all 4x4."""
  expected = (3 * 64 * 16 + 64) + (64 * 128 * 16 + 2 * 128) + (128 * 256 * 16 + 2 * 256) + (
      256 * 512 * 16 + 2 * 512) + (512 * 16 + 1)
  assert expected == 2_765_633
  shapes = jax.eval_shape(NLayerDiscriminator().init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 256, 256, 3)))
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == expected
  assert jax.eval_shape(NLayerDiscriminator().apply, shapes,
                        jnp.zeros((2, 256, 256, 3))).shape == (2, 30, 30, 1)  # 70x70 patches


def test_hinge_loss_values():
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0])
  # relu(1 - real) = [0, 0.5]; relu(1 + fake) = [0, 1]
  assert float(autoencoder.hinge_discriminator_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))


def _state_and_step(config, images, optimizer=None):
  opts = builders.get_autoencoder_options(config)
  optimizer = optimizer or autoencoder._optimizer(opts)
  state = random_state(opts.spec, optimizer)
  return opts, optimizer, state, jax.jit(autoencoder.make_train_step(opts.spec, opts, optimizer))


@pytest.mark.slow  # three compilations of the network's backward pass
def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
  """λ = ‖∇_W L_rec‖ / (‖∇_W L_G‖ + 1e-4) · disc_weight at the decoder's conv_out kernel W, with each
  gradient taken on its own (the step reads them off one VJP)."""
  images = jax.random.uniform(jax.random.PRNGKey(3), (8, 16, 16, 1)) * 2 - 1
  opts, _, state, step = _state_and_step(tiny_config(disc_start=0, disc_weight=0.5), images)
  model, disc = autoencoder.build_modules(opts.spec)
  key = jax.random.fold_in(jax.random.PRNGKey(9), 0)
  k_post, k_drop = jax.random.split(key)

  def x_hat_of(params):
    return model.apply({"params": params["autoencoder"]}, images, k_post, train=True,
                       rngs={"dropout": k_drop})[0]

  def rec(params):
    r = jnp.abs(images - x_hat_of(params))
    return jnp.sum(r / jnp.exp(params["logvar"]) + params["logvar"]) / 8

  gen = lambda params: -jnp.mean(disc.apply({"params": state.disc_params}, x_hat_of(params)))
  last = lambda g: g["autoencoder"]["decoder"]["conv_out"]["kernel"]
  g_rec, g_gen = last(jax.jit(jax.grad(rec))(state.params)), last(jax.jit(jax.grad(gen))(state.params))
  want = float(jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_gen) + 1e-4)) * 0.5
  _, metrics = step(state, images, jax.random.PRNGKey(9))
  assert float(metrics["d_weight"]) == pytest.approx(want, rel=1e-4)
  assert float(metrics["disc_factor"]) == 1.0


@pytest.mark.slow  # two compilations of the autoencoder step
def test_before_disc_start_the_autoencoder_step_ignores_the_discriminator():
  """With the discriminator present but before disc_start, the autoencoder's update equals that of
  a run without one, and the discriminator's parameters stay put (zero hinge gradient)."""
  images = jax.random.uniform(jax.random.PRNGKey(3), (8, 16, 16, 1)) * 2 - 1
  # Plain gradient descent (lr 1), so the update is the gradient: Adam's first step,
  # ≈ lr·sign(g), would turn the float32 rounding noise of a gradient that is zero up to rounding
  # (a 16-element leaf here) into differences of ±lr between the two programs.
  sgd = optax.sgd(1.0)
  _, _, with_disc, step_disc = _state_and_step(tiny_config(disc_start=5), images, sgd)
  _, _, plain, step_plain = _state_and_step(tiny_config(disc_start=-1), images, sgd)
  assert plain.disc_params == {}
  a, metrics = step_disc(with_disc, images, jax.random.PRNGKey(1))
  b, _ = step_plain(plain, images, jax.random.PRNGKey(1))
  assert float(metrics["disc_factor"]) == 0.0

  updates = [jax.tree.map(lambda p, p0: np.asarray(p - p0), s.params, plain.params) for s in (a, b)]
  scale = max(float(np.abs(u).max()) for u in jax.tree.leaves(updates[1]))
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=0, atol=1e-5 * scale), *updates)
  jax.tree.map(lambda u, v: np.testing.assert_array_equal(u, v), a.disc_params,
               with_disc.disc_params)


@pytest.mark.slow  # ~6 s: compiles the autoencoder step
def test_step_loss_is_the_ldm_objective_without_discriminator():
  images = jax.random.uniform(jax.random.PRNGKey(4), (8, 16, 16, 1)) * 2 - 1
  opts, _, state, step = _state_and_step(tiny_config(disc_start=-1, rec_loss="l2",
                                                     kl_weight=1e-2), images)
  model, _ = autoencoder.build_modules(opts.spec)
  key = jax.random.fold_in(jax.random.PRNGKey(2), 0)
  k_post, k_drop = jax.random.split(key)
  x_hat, mean, logvar = jax.jit(lambda p: model.apply(
      {"params": p}, images, k_post, train=True, rngs={"dropout": k_drop}))(state.params["autoencoder"])
  want = jnp.sum(jnp.square(images - x_hat)) / 8 + 1e-2 * jnp.sum(
      kl_to_standard_normal(mean, logvar)) / 8  # logvar s = 0 at init
  _, metrics = step(state, images, jax.random.PRNGKey(2))
  assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.slow  # ~5 s: compiles the encoder twice
def test_scale_by_std_makes_the_scaled_latents_unit_variance():
  opts = builders.get_autoencoder_options(tiny_config())
  params = random_state(opts.spec, optax.adam(1e-3)).params["autoencoder"]
  batches = [np.asarray(jax.random.uniform(jax.random.PRNGKey(i), (5, 16, 16, 1))) * 2 - 1
             for i in range(3)]
  result = autoencoder.scale_by_std(opts.spec, params, batches, jax.random.PRNGKey(7))
  encode = autoencoder.encode_fn(opts.spec)
  z = np.concatenate([np.asarray(encode(params, jax.random.fold_in(jax.random.PRNGKey(7), i),
                                        jnp.asarray(b))).ravel() for i, b in enumerate(batches)])
  assert result["num_latent_values"] == z.size == 15 * 8 * 8 * 2
  np.testing.assert_allclose(result["scale_factor"], 1.0 / z.std(), rtol=1e-5)
  np.testing.assert_allclose(np.std(result["scale_factor"] * z), 1.0, rtol=1e-5)


def test_options_refuse_bad_settings():
  with pytest.raises(ValueError, match="rec_loss='l3'"):
    builders.get_autoencoder_options(tiny_config(rec_loss="l3"))
  with pytest.raises(ValueError, match="lpips_vgg.*never|nothing is downloaded"):
    builders.get_autoencoder_options(tiny_config(perceptual_weight=1.0))
  with pytest.raises(ValueError, match="num_groups=3"):
    builders.get_autoencoder_options(tiny_config(num_groups=3))
  config = tiny_config(ch_mult=(1, 2, 2, 2, 2))
  with pytest.raises(ValueError, match="divisible by the autoencoder's downsampling factor 16"):
    config.data.image_size = 24
    builders.get_autoencoder_options(config)
