"""ControlNet (models/controlnet.py, experiment/controlnet.py): exact properties of the zero
convolutions for every backbone, the frozen base under training, the Sobel control, and
train_controlnet -> sample (with --control) -> eval on tiny digits configs."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from score_sde.experiment import builders, controlnet, evaluation, generate, train, training
from score_sde.models import controlnet as controlnet_models
from score_sde.models.ddpm import DDPM
from score_sde.models.dit import DiT
from score_sde.models.ncsnpp import NCSNpp
from tests.helpers.tiny_config import tiny_config

BACKBONES = {
    "ncsnpp": NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                     resblock_type="ddpm", fir=False, num_classes=3),
    "ddpm": DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0),
    "dit": DiT(patch_size=2, hidden_size=16, depth=3, num_heads=2, num_classes=3),
}
X = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
T = jnp.array([0.3, 1.2])
HINT = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1))


def _condition(name):
  return {"class_labels": jnp.array([0, 3])} if BACKBONES[name].num_classes else {}


def _controlled(name):
  base = BACKBONES[name]
  model = controlnet_models.ControlledModel(
      base=base, controlnet=controlnet_models.for_backbone(base, name, 8, 8))
  params = jax.jit(lambda key: model.init(key, X, T, train=False, hint=HINT,
                                          **_condition(name)))(jax.random.PRNGKey(2))["params"]
  params["controlnet"] = controlnet_models.copy_encoder_params(params["controlnet"], params["base"])
  return base, model, params


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n != "dit" else n
                                  for n in BACKBONES])
def test_the_controlled_network_is_the_base_at_initialisation_and_at_control_scale_zero(name):
  """Bitwise: at initialisation (zero convolutions), and with every weight moved at scale 0."""
  base, model, params = _controlled(name)
  cond = _condition(name)
  base_apply = jax.jit(lambda p: base.apply({"params": p}, X, T, train=False, **cond))
  apply = jax.jit(lambda p, s: model.apply({"params": p}, X, T, train=False, hint=HINT,
                                           control_scale=s, **cond))
  np.testing.assert_array_equal(apply(params, 1.0), base_apply(params["base"]))
  # The copy starts at the base's weights: its first layer is the base's.
  copy, src = params["controlnet"]["encoder"], params["base"]
  first = "x_embedder" if name == "dit" else "Conv_0"
  np.testing.assert_array_equal(copy[first]["kernel"], src[first]["kernel"])

  rng = np.random.default_rng(0)
  moved = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype), params)
  want = base_apply(moved["base"])
  np.testing.assert_array_equal(apply(moved, 0.0), want)
  # ... while at scale 1 the control now acts (outputs are O(1) with these weights).
  assert float(jnp.abs(apply(moved, 1.0) - want).max()) > 1e-2 * float(jnp.abs(want).max())


def test_residual_count_and_shapes_follow_the_skips():
  """NCSN++/DDPM with ch_mult (1, 2) and one block: skips conv_in, block 1, downsample, block 2,
  then the middle block: 5 residuals; DiT: one per copied block (half of 3 -> 1). Shapes only."""
  expected = {"ncsnpp": [(2, 8, 8, 8)] * 2 + [(2, 4, 4, 8)] + [(2, 4, 4, 16)] * 2,
              "ddpm": [(2, 8, 8, 32)] * 2 + [(2, 4, 4, 32)] + [(2, 4, 4, 64)] * 2,
              "dit": [(2, 16, 16)]}
  for name, base in BACKBONES.items():
    cn = controlnet_models.for_backbone(base, name, 8, 8)
    cond = _condition(name)
    shapes = jax.eval_shape(lambda: cn.init(jax.random.PRNGKey(0), X, T, HINT, train=False, **cond))
    out = jax.eval_shape(lambda p: cn.apply(p, X, T, HINT, train=False, **cond), shapes)
    assert [tuple(r.shape) for r in out] == expected[name]
  base = BACKBONES["ncsnpp"]
  labels = jnp.array([0, 1])
  shapes = jax.eval_shape(lambda: base.init(jax.random.PRNGKey(0), X, T, train=False,
                                            class_labels=labels))
  with pytest.raises(ValueError, match="control must be 5 residuals"):
    jax.eval_shape(lambda p: base.apply(p, X, T, train=False, class_labels=labels,
                                        control=[jnp.zeros((2, 8, 8, 8))]), shapes)
  with pytest.raises(ValueError, match="ControlNet needs a backbone"):
    controlnet_models.for_backbone(base, "ncsn", 8, 8)
  with pytest.raises(ValueError, match="control image must be"):
    jax.eval_shape(lambda: controlnet_models.for_backbone(base, "ncsnpp", 8, 8).init(
        jax.random.PRNGKey(0), X, T, HINT[:1], train=False, class_labels=labels))


def _training_setup():
  base = NCSNpp(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                resblock_type="ddpm", fir=False, num_classes=3)
  model = controlnet_models.ControlledModel(
      base=base, controlnet=controlnet_models.for_backbone(base, "ncsnpp", 8, 8))
  params = jax.jit(lambda key: model.init(key, X, T, train=False, hint=HINT,
                                          class_labels=jnp.array([0, 1])))(jax.random.PRNGKey(2))
  params = params["params"]
  params["controlnet"] = controlnet_models.copy_encoder_params(params["controlnet"], params["base"])
  spec = controlnet.ControlSpec("sobel_edges", drop_prob=0.0, control_scale=1.0, guidance_scale=0.0)
  model_fn = training.linen_model_fn(model)

  def build(fn):
    def loss(p, key, images, labels=None):
      noise = jax.random.normal(key, images.shape)
      out = fn(p, images + noise, jnp.full(images.shape[:1], 0.5), class_labels=labels)
      losses = jnp.mean((out + noise) ** 2, axis=(1, 2, 3))
      return jnp.mean(losses), {"losses": losses}
    return loss

  loss_fn = controlnet.controlled_loss(build, model_fn, spec, lambda x: (x + 1) / 2)
  optimizer = controlnet.freeze_base(optax.adam(1e-2))
  state = training.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              ema_params=jax.tree.map(jnp.copy, params),
                              opt_state=optimizer.init(params))
  return loss_fn, optimizer, state


@pytest.mark.slow
def test_training_freezes_the_base_and_moves_the_controlnet():
  loss_fn, optimizer, state = _training_setup()
  images = 2 * jax.random.uniform(jax.random.PRNGKey(3), (1, 4, 8, 8, 1)) - 1
  batch = {"image": images, "label": jnp.array([[1, 2, 0, 3]])}
  grads_of = jax.jit(lambda p: jax.grad(lambda q: loss_fn(q, jax.random.PRNGKey(5), batch["image"][0],
                                                          batch["label"][0])[0])(p))
  # At initialisation only the zero convolutions after the copy get a gradient (what feeds them is
  # multiplied by their zero weights), the base none at all (stop_gradient). Each optimizer step
  # opens the next link of the chain (Sec. 3.1 of the paper): after one step the copy and the hint
  # encoder's zero convolution learn, after two its inner convolutions.
  g0 = grads_of(state.params)
  norm = lambda tree: float(optax.tree.norm(tree))
  zero_convs = {k: v for k, v in g0["controlnet"].items() if k.startswith("zero_convs")}
  assert norm(zero_convs) > 0
  assert norm(g0["controlnet"]["encoder"]) == 0 and norm(g0["base"]) == 0
  assert norm(g0["controlnet"]["input_hint_block"]) == 0

  step = jax.jit(training.make_train_step(loss_fn, optimizer, 0.9, frozen=("base",)))
  start = state.params
  for _ in range(3):
    state, _ = step(state, batch, jax.random.PRNGKey(4))
    hint_grads = grads_of(state.params)["controlnet"]["input_hint_block"]
    if int(state.step) == 1:
      assert norm(grads_of(state.params)["controlnet"]["encoder"]) > 0
      assert norm(hint_grads["zero_conv"]) > 0 and norm(hint_grads["conv_0"]) == 0
    if int(state.step) == 2:
      assert norm(hint_grads["conv_0"]) > 0
  for got, want in zip(jax.tree.leaves(state.params["base"]), jax.tree.leaves(start["base"])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(state.ema_params["base"]), jax.tree.leaves(start["base"])):
    np.testing.assert_array_equal(got, want)
  unmoved = [jax.tree_util.keystr(path) for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(state.params["controlnet"]),
      jax.tree.leaves(start["controlnet"])) if np.array_equal(a, b)]
  # Every ControlNet parameter changed but the fixed random Fourier features (not trained).
  assert unmoved == ["['encoder']['GaussianFourierProjection_0']['W']"]


def test_the_optimiser_keeps_no_state_for_the_frozen_base():
  _, optimizer, state = _training_setup()
  adam_leaves = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.opt_state)
                    if hasattr(x, "shape") and x.ndim > 0)
  trained = sum(int(x.size) for x in jax.tree.leaves(state.params["controlnet"]))
  assert adam_leaves == 2 * trained  # Adam's two moments of the ControlNet alone


def test_sobel_edges_of_a_ramp_and_a_step():
  """I = a·column: interior gx = (1 + 2 + 1)·2a = 8a, gy = 0, so the map is 8a / (4√2)."""
  a = 0.05
  ramp = jnp.tile(a * jnp.arange(6.0), (6, 1))[None, :, :, None]
  edges = controlnet.sobel_edges(ramp)
  np.testing.assert_allclose(edges[0, 1:-1, 1:-1, 0], 8 * a / (4 * np.sqrt(2)), rtol=1e-5)
  step = jnp.zeros((1, 6, 6, 1)).at[:, :, 3:].set(1.0)  # a vertical step: the largest gx is 4
  np.testing.assert_allclose(controlnet.sobel_edges(step)[0, 2, 2:4, 0], 4 / (4 * np.sqrt(2)),
                             rtol=1e-5)
  spec = controlnet.ControlSpec("sobel_edges", 0.0, 1.0, 0.0)
  images = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (3, 8, 8, 1)))
  np.testing.assert_allclose(controlnet.adherence(images, spec.control(images), spec), 1.0,
                             rtol=1e-6)


def test_dropped_controls_are_zero_at_the_configured_rate():
  spec = controlnet.ControlSpec("sobel_edges", drop_prob=0.3, control_scale=1.0, guidance_scale=0.0)
  images = jax.random.uniform(jax.random.PRNGKey(0), (4000, 4, 4, 1))
  control = spec.training_control(jax.random.PRNGKey(1), images)
  dropped = np.asarray(jnp.all(control == 0, axis=(1, 2, 3)))
  # Binomial(4000, 0.3): standard deviation 29 images; 5 sigma is 145.
  assert abs(dropped.sum() - 1200) < 145
  np.testing.assert_array_equal(control[~dropped], spec.control(images)[~dropped])


def test_guidance_on_the_control_combines_the_two_predictions():
  def model_fn(params, x, labels, *, hint, control_scale):
    return params * x + control_scale * jnp.sum(hint)

  hint = jnp.ones((1, 2, 2, 1))
  fn = controlnet.bind(model_fn, hint, control_scale=0.5, guidance_scale=2.0)
  x = jnp.ones((1, 2, 2, 1))
  # (1 + w)(x + 0.5·4) - w·x = x + 3·2
  np.testing.assert_allclose(fn(1.0, x, None), x + 6.0)


def _control_config(base_dir):
  config = tiny_config()
  config.controlnet.update(control_type="sobel_edges", base_workdir=str(base_dir), drop_prob=0.2)
  config.eval.update(enable_bpd=False, enable_sampling=True, num_samples=8, batch_size=8,
                     begin_ckpt=1, end_ckpt=1, checkpoint_timeout_s=0.0)
  config.training.update(n_iters=3, snapshot_freq=3, snapshot_freq_for_preemption=0)
  config.model.num_scales = 5
  return config


def test_controlnet_configs_refuse_what_they_cannot_do(tmp_path):
  config = _control_config(tmp_path)
  config.controlnet.control_type = "canny"
  with pytest.raises(ValueError, match="control_type"):
    builders.check_config(config)
  config.controlnet.control_type = "sobel_edges"
  config.eval.enable_bpd = True
  with pytest.raises(ValueError, match="enable_bpd=True is not available for a ControlNet"):
    builders.check_config(config)
  config.eval.enable_bpd = False
  with pytest.raises(ValueError, match="--mode likelihood is not available for a super-resolution "
                                       "or ControlNet"):
    evaluation.likelihood(config, str(tmp_path / "w"))
  with pytest.raises(ValueError, match="--mode train_controlnet"):
    train.train(config, str(tmp_path / "w"))
  config.controlnet.base_workdir = None
  with pytest.raises(ValueError, match="needs config.controlnet.base_workdir"):
    train.train_controlnet(config, str(tmp_path / "w"))


@pytest.mark.slow
def test_train_controlnet_sample_with_controls_and_eval(tmp_path):
  base_config = tiny_config()
  base_config.training.update(n_iters=3, snapshot_freq=3, snapshot_freq_for_preemption=0)
  base_config.model.num_scales = 5
  base_state = train.train(base_config, str(tmp_path / "base"))

  config = _control_config(tmp_path / "base")
  state = train.train_controlnet(config, str(tmp_path / "cn"))
  for got, want in zip(jax.tree.leaves(state.params["base"]),
                       jax.tree.leaves(base_state.ema_params)):
    np.testing.assert_array_equal(got, want)  # the base's EMA weights, frozen

  report = evaluation.evaluate(config, str(tmp_path / "cn"))[3]
  assert np.isfinite(report["fdd"]["value"]) and "bpd" not in report
  # The reported adherence is that of the stored samples to the first 8 test digits' edge maps.
  with np.load(tmp_path / "cn" / "eval" / "ckpt_1" / "samples_0.npz") as f:
    stored = f["samples"].astype(np.float32) / 255.0
  exp = builders.build_experiment(config)
  controls = controlnet.sobel_edges(jnp.asarray(exp.test_images(0, 8)))
  want = controlnet.adherence(stored, controls, exp.controlnet).mean()
  assert report["adherence"]["value"] == pytest.approx(float(want), abs=1e-6)
  spec = json.load(open(tmp_path / "cn" / "eval" / "ckpt_1" / "sampling.json"))
  assert spec["controlnet"] == {"control_type": "sobel_edges", "control_scale": 1.0,
                                "guidance_scale": 0.0}

  controls = tmp_path / "controls"
  controls.mkdir()
  for i in range(3):
    edge = np.zeros((8, 8), np.uint8)
    edge[:, 2 + i] = 255
    Image.fromarray(edge).save(controls / f"c{i}.png")
  path = generate.sample(config, str(tmp_path / "cn"), str(controls))
  out = os.path.dirname(path)
  with np.load(os.path.join(out, "samples.npz")) as f:
    assert f["samples"].shape == (3, 8, 8, 1) and f["controls"].shape == (3, 8, 8, 1)
    assert np.all(np.isfinite(f["adherence"]))
  assert os.path.isfile(os.path.join(out, "controls.png"))

  # control_scale 0: the base model's samples (same key, same sampler), to float32 rounding: the
  # controlled network is another XLA program, whose fusions may round the base's layers otherwise
  # (1.6e-6 relative after the sampler's steps with XLA:CPU's loop emitters).
  config.controlnet.control_scale = 0.0
  exp, base_exp = builders.build_experiment(config), builders.build_experiment(base_config)
  key = jax.random.PRNGKey(9)
  got, _ = exp.generate(key, state.ema_params, 8)
  want, _ = base_exp.generate(key, base_state.ema_params, 8)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_a_record_from_before_the_controlnet_section_still_resumes():
  """Fields the record lacks were added to the code after the run: not a refused change."""
  config = tiny_config()
  record = builders.config_record(config)
  del record["controlnet"]
  refused, allowed, _ = builders.config_changes(record, config)
  assert refused == [] and "controlnet.control_type" in allowed
  record = builders.config_record(config)
  config.controlnet.control_type = "sobel_edges"
  assert builders.config_changes(record, config)[0] == ["controlnet.control_type"]
