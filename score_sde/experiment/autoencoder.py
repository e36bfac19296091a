"""Training the KL autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3.1 and App. G):
``--mode train_autoencoder`` writes ``<workdir>/autoencoder``.

The objective is LDM's `LPIPSWithDiscriminator` (Esser et al. 2021, eq. 7 for the adaptive weight):

  L = Σ_pixels [r(x, x̂) / e^s + s] / B + kl_weight · Σ KL(q(z|x) ‖ N(0, I)) / B
      + λ_adaptive · disc_weight · 1[step ≥ disc_start] · (−mean D(x̂)),

with r = |x − x̂| ('l1') or (x − x̂)² ('l2') plus perceptual_weight · LPIPS(x, x̂), s a learned log-
variance (init logvar_init), and λ_adaptive = ‖∇_W L_rec‖ / (‖∇_W L_G‖ + 1e-4) clipped to [0, 1e4]
at W, the decoder's last convolution. The patch discriminator D (models/patch_discriminator.py)
takes the hinge loss ½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂))) from disc_start on.

The work directory holds `autoencoder.json` (the architecture and the data it was trained on: what
a latent score model needs to rebuild it; a resume with other settings is refused), the orbax
checkpoints, TensorBoard logs, reconstruction grids `recon/iter_<step>.png` (inputs over
reconstructions) and, after the last step, `latent_scale.json`: 1/std of the encoded training
latents (LDM's scale_by_std), the scale factor of every latent score model trained on it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from score_sde.experiment import distributed, loop
from score_sde.experiment.outputs import atomic_json
from score_sde.io import checkpointing, datasets, logging_utils
from score_sde.models.autoencoder import AutoencoderKL, kl_to_standard_normal, posterior_sample
from score_sde.models.patch_discriminator import NLayerDiscriminator

log = logging.getLogger(__name__)

SPEC_FILE = "autoencoder.json"
SCALE_FILE = "latent_scale.json"
REC_LOSSES = ("l1", "l2")


@dataclasses.dataclass(frozen=True)
class AutoencoderOptions:
  """config.autoencoder, split into what defines the checkpoint (`spec`) and how to train it."""
  spec: dict  # {'model': AutoencoderKL fields, 'discriminator': {...} or None, 'data': {...}}
  rec_loss: str
  kl_weight: float
  perceptual_weight: float
  lpips_vgg: str | None
  lpips_lin: str | None
  logvar_init: float
  disc_start: int
  disc_weight: float
  batch_size: int
  n_iters: int
  lr: float
  beta1: float
  beta2: float
  log_freq: int
  eval_freq: int
  snapshot_freq: int
  snapshot_freq_for_preemption: int
  num_recon: int
  scale_num_images: int


@struct.dataclass
class AutoencoderState:
  step: jax.Array
  params: Any  # {'autoencoder': AutoencoderKL params, 'logvar': scalar}
  opt_state: Any
  disc_params: Any  # {} without a discriminator
  disc_opt_state: Any


def build_modules(spec: dict) -> tuple[AutoencoderKL, NLayerDiscriminator | None]:
  m = spec["model"]
  model = AutoencoderKL(**{**m, "ch_mult": tuple(m["ch_mult"]),
                           "attn_resolutions": tuple(m["attn_resolutions"])})
  d = spec.get("discriminator")
  return model, (NLayerDiscriminator(ndf=d["ndf"], n_layers=d["n_layers"]) if d else None)


def latent_shape(spec: dict) -> tuple[int, int, int]:
  """[h, w, c] of the latents of the spec's images."""
  model, _ = build_modules(spec)
  size = spec["data"]["image_size"] // model.downsampling_factor
  return (size, size, model.embed_dim)


def _optimizer(opts: AutoencoderOptions) -> optax.GradientTransformation:
  return optax.adam(opts.lr, b1=opts.beta1, b2=opts.beta2)


def init_state(key, spec: dict, optimizer, logvar_init: float = 0.0) -> AutoencoderState:
  model, disc = build_modules(spec)
  d = spec["data"]
  x = jnp.zeros((1, d["image_size"], d["image_size"], d["num_channels"]), jnp.float32)
  k_ae, k_disc, k_post = jax.random.split(key, 3)
  params = {"autoencoder": model.init(k_ae, x, k_post)["params"],
            "logvar": jnp.asarray(logvar_init, jnp.float32)}
  disc_params = disc.init(k_disc, x)["params"] if disc else {}
  return AutoencoderState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params), disc_params=disc_params,
                          disc_opt_state=optimizer.init(disc_params))


def abstract_state(spec: dict):
  """Shapes and shardings of an `AutoencoderState` of ``spec`` (Adam's state has the parameters'
  shapes whatever its settings), to restore a checkpoint into."""
  init = lambda: init_state(jax.random.PRNGKey(0), spec, optax.adam(1e-4))
  return checkpointing.abstract_like(jax.eval_shape(init))


def reconstruction_error(x, x_hat, kind: str):
  """|x − x̂| or (x − x̂)², elementwise."""
  return jnp.abs(x - x_hat) if kind == "l1" else jnp.square(x - x_hat)


def hinge_discriminator_loss(logits_real, logits_fake):
  """½ (mean relu(1 − D(x)) + mean relu(1 + D(x̂))) (taming's hinge_d_loss)."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def make_train_step(spec: dict, opts: AutoencoderOptions, optimizer, perceptual_fn=None):
  """``step(state, images [B, H, W, C] in model space, key) -> (state, metrics)``; the randomness of
  step n is fold_in(key, n). ``perceptual_fn(x, x̂) -> [B]`` is LPIPS when perceptual_weight > 0."""
  model, disc = build_modules(spec)

  def terms(params, disc_params, images, key):
    k_post, k_drop = jax.random.split(key)
    x_hat, mean, logvar = model.apply({"params": params["autoencoder"]}, images, k_post,
                                      train=True, rngs={"dropout": k_drop})
    rec = reconstruction_error(images, x_hat, opts.rec_loss)  # [B, H, W, C]
    if opts.perceptual_weight > 0:
      rec = rec + opts.perceptual_weight * perceptual_fn(images, x_hat)[:, None, None, None]
    batch = images.shape[0]
    nll = jnp.sum(rec / jnp.exp(params["logvar"]) + params["logvar"]) / batch
    kl = jnp.sum(kl_to_standard_normal(mean, logvar)) / batch
    g = -jnp.mean(disc.apply({"params": disc_params}, x_hat)) if disc else jnp.zeros(())
    return (nll, kl, g), {"x_hat": x_hat, "rec_loss": jnp.mean(rec)}

  def step(state: AutoencoderState, images, key):
    key = jax.random.fold_in(key, state.step)
    (nll, kl, g), vjp, aux = jax.vjp(
        lambda p: terms(p, state.disc_params, images, key), state.params, has_aux=True)
    one, zero = jnp.ones(()), jnp.zeros(())
    # The KL term depends on the encoder only, so at the decoder's last layer these gradients are
    # those of the reconstruction term alone, which the adaptive weight needs.
    grads, = vjp((one, jnp.asarray(opts.kl_weight, jnp.float32), zero))
    metrics = {"nll": nll, "kl": kl, "rec_loss": aux["rec_loss"], "logvar": state.params["logvar"]}
    loss = nll + opts.kl_weight * kl
    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if disc:
      grad_g, = vjp((zero, zero, one))
      last = lambda tree: tree["autoencoder"]["decoder"]["conv_out"]["kernel"]
      d_weight = jnp.clip(_global_norm(last(grads)) / (_global_norm(last(grad_g)) + 1e-4),
                          0.0, 1e4) * opts.disc_weight
      disc_factor = (state.step >= opts.disc_start).astype(jnp.float32)
      grads = jax.tree.map(lambda a, b: a + d_weight * disc_factor * b, grads, grad_g)
      loss = loss + d_weight * disc_factor * g
      fake = jax.lax.stop_gradient(aux["x_hat"])
      d_loss_fn = lambda dp: disc_factor * hinge_discriminator_loss(
          disc.apply({"params": dp}, images), disc.apply({"params": dp}, fake))
      d_loss, d_grads = jax.value_and_grad(d_loss_fn)(disc_params)
      d_updates, disc_opt_state = optimizer.update(d_grads, disc_opt_state, disc_params)
      disc_params = optax.apply_updates(disc_params, d_updates)
      metrics.update(g_loss=g, d_loss=d_loss, d_weight=d_weight, disc_factor=disc_factor)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = AutoencoderState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                 opt_state=opt_state, disc_params=disc_params,
                                 disc_opt_state=disc_opt_state)
    return new_state, {"loss": loss, **metrics}

  return step


def encode_fn(spec: dict):
  """``encode(params, key, images) -> z``: a draw from the posterior q(z | x) (as LDM encodes)."""
  model, _ = build_modules(spec)

  def encode(params, key, images):
    mean, logvar = model.apply({"params": params}, images, method=AutoencoderKL.encode)
    return posterior_sample(key, mean, logvar)

  return encode


def decode_fn(spec: dict):
  """``decode(params, z) -> x̂``."""
  model, _ = build_modules(spec)
  return lambda params, z: model.apply({"params": params}, z, method=AutoencoderKL.decode)


def reconstruct_fn(spec: dict):
  """``reconstruct(params, images) -> x̂`` from the posterior mean."""
  model, _ = build_modules(spec)
  return lambda params, images: model.apply({"params": params}, images, sample_posterior=False)[0]


def scale_by_std(spec: dict, params, batches, key) -> dict:
  """1/std of all entries of posterior draws z ~ q(z | x) over ``batches`` of model-space images
  (LDM's scale_by_std, whose value for Stable Diffusion's VAE is 0.18215)."""
  encode = jax.jit(encode_fn(spec))
  total, total_sq, count = 0.0, 0.0, 0
  for i, images in enumerate(batches):
    z = np.asarray(encode(params, jax.random.fold_in(key, i), jnp.asarray(images)), np.float64)
    total, total_sq, count = total + z.sum(), total_sq + np.square(z).sum(), count + z.size
  mean = total / count
  std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
  if not std > 0:
    raise ValueError("The encoded training latents have zero spread; the autoencoder is degenerate.")
  return {"scale_factor": 1.0 / std, "latent_std": std, "latent_mean": float(mean),
          "num_latent_values": int(count)}


def read_spec(out_dir: str) -> dict:
  path = os.path.join(out_dir, SPEC_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: {os.path.dirname(out_dir)!r} holds no autoencoder. "
                            "Train one with --mode train_autoencoder (e.g. configs/digits/"
                            "autoencoder.py) or import one with score-sde-convert --autoencoder.")
  with open(path) as f:
    return json.load(f)


def _write_or_check_spec(out_dir: str, spec: dict) -> None:
  path = os.path.join(out_dir, SPEC_FILE)
  if os.path.isfile(path):
    stored = read_spec(out_dir)
    if stored != json.loads(json.dumps(spec)):
      raise ValueError(f"{path} describes another autoencoder ({stored}) than config.autoencoder "
                       f"and config.data ({spec}); use a fresh --workdir or the stored settings.")
  elif jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    atomic_json(path, spec)


def train_autoencoder(config, workdir: str):
  """Trains the KL autoencoder of config.autoencoder on config.data into ``workdir/autoencoder``
  (or resumes), then stores the latent scale factor. Returns (state, last evaluation report)."""
  from score_sde.experiment import builders  # builders imports this module's spec helpers

  opts = builders.get_autoencoder_options(config)
  distributed.check_batch_size(opts.batch_size, "config.autoencoder.batch_size")
  out_dir = os.path.join(workdir, "autoencoder")
  _write_or_check_spec(out_dir, opts.spec)
  seed = config.seed
  dataset = functools.partial(builders.get_dataset, config)
  scaler, inverse_scaler = builders.get_data_scaler(config), builders.get_data_inverse_scaler(config)
  mesh = distributed.data_mesh()
  replicated = distributed.replicated(mesh)
  optimizer = _optimizer(opts)
  perceptual_fn = None
  if opts.perceptual_weight > 0:
    from score_sde.metrics import lpips  # pylint: disable=import-outside-toplevel

    weights = lpips.load_lpips(opts.lpips_vgg, opts.lpips_lin)
    perceptual_fn = functools.partial(lpips.lpips_distance, weights.params)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 11)
  init_key, train_key, eval_key = jax.random.split(key, 3)
  init = distributed.jit_initializer(
      lambda k: init_state(k, opts.spec, optimizer, opts.logvar_init), mesh)
  step = jax.jit(make_train_step(opts.spec, opts, optimizer, perceptual_fn),
                 in_shardings=(replicated, distributed.batch_sharding(mesh, 0), replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)
  reconstruct = jax.jit(reconstruct_fn(opts.spec))
  to_global = lambda a: distributed.global_array(a, distributed.batch_sharding(mesh, 0), 0)
  with dataset(split="test", batch_size=opts.batch_size, shuffle_seed=seed + 1,
               evaluation=True) as eval_iter:
    test_batch = scaler(next(eval_iter)["image"])

  def evaluate(step_reached, state):
    x_hat = np.asarray(reconstruct(state.params["autoencoder"], jnp.asarray(test_batch)))
    x, y = np.clip(inverse_scaler(test_batch), 0, 1), np.clip(inverse_scaler(x_hat), 0, 1)
    mse = np.mean(np.square(x - y), axis=(1, 2, 3))
    report = {"test_l1": float(np.mean(np.abs(x - y))),
              "test_psnr": float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))}
    log.info("autoencoder step %d: %s", step_reached, report)
    return report

  def after_snapshot(step_reached, state, writer):
    n = min(opts.num_recon, len(test_batch))
    x_hat = np.asarray(reconstruct(state.params["autoencoder"], jnp.asarray(test_batch[:n])))
    grid = np.clip(inverse_scaler(np.concatenate([test_batch[:n], x_hat])), 0.0, 1.0)
    if jax.process_index() == 0:
      path = os.path.join(out_dir, "recon", f"iter_{step_reached}.png")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      logging_utils.save_image_grid(grid, path, nrow=n)
      writer.image_grid(step_reached, "reconstructions", grid, nrow=n)

  def log_scalars(step_reached, metrics):
    scalars = {name: float(np.asarray(value)) for name, value in metrics.items()}
    log.info("autoencoder step %d: %s", step_reached,
             ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    return scalars

  trainer = loop.Trainer(
      name="autoencoder", init_state=lambda: init(init_key), abstract_state=abstract_state(opts.spec),
      step=step,
      open_data=lambda start: dataset(split="train", batch_size=opts.batch_size,
                                      shuffle_seed=seed + 11, start_step=start),
      next_args=lambda it: (to_global(scaler(next(it)["image"])), train_key),
      log_scalars=log_scalars, evaluate=evaluate, after_snapshot=after_snapshot,
      nonfinite_advice="Lower config.autoencoder.lr or config.autoencoder.disc_weight.")
  schedule = loop.Schedule(n_iters=opts.n_iters, steps_per_call=1,
                           examples_per_step=opts.batch_size, log_freq=opts.log_freq,
                           eval_freq=opts.eval_freq, snapshot_freq=opts.snapshot_freq,
                           preemption_freq=opts.snapshot_freq_for_preemption, eval_at_end=True)
  state, report = loop.run(trainer, schedule, out_dir)
  _store_scale_factor(out_dir, opts, state, dataset, scaler, jax.random.fold_in(key, 3))
  return state, report


def _store_scale_factor(out_dir, opts: AutoencoderOptions, state, dataset, scaler, key) -> None:
  """Writes latent_scale.json for the final checkpoint unless it is there already."""
  path = os.path.join(out_dir, SCALE_FILE)
  step = int(state.step)
  if os.path.isfile(path) and json.load(open(path)).get("step") == step:
    return
  batch = min(opts.batch_size * 8, opts.scale_num_images)
  batches = []
  with dataset(split="train", batch_size=batch, shuffle_seed=0, num_epochs=1, evaluation=True,
               drop_remainder=False) as it:
    taken = 0
    for b in it:
      images = scaler(b["image"])[b["mask"]]
      batches.append(images[:opts.scale_num_images - taken])
      taken += len(batches[-1])
      if taken >= opts.scale_num_images:
        break
  result = scale_by_std(opts.spec, state.params["autoencoder"], batches, key)
  result.update(step=step, num_images=taken, dataset=opts.spec["data"]["dataset"])
  if jax.process_index() == 0:
    atomic_json(path, result)
  log.info("latent scale factor of the autoencoder at step %d: %.5f (1/std of %d latent values)",
           step, result["scale_factor"], result["num_latent_values"])


def spec_from_fields(model: dict, discriminator: dict | None, data: datasets.DataSpec | Any,
                     centered: bool) -> dict:
  """The JSON-able description of an autoencoder run (`SPEC_FILE`)."""
  return {"model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.items()},
          "discriminator": discriminator,
          "data": {"dataset": data.dataset, "image_size": data.image_size,
                   "num_channels": data.num_channels, "centered": centered}}


def write_imported(workdir: str, spec: dict, params, *, step: int = 0,
                   scale_factor: float | None = None) -> str:
  """An imported autoencoder (e.g. Stable Diffusion's VAE, `io/convert.py`) as the work directory of
  an autoencoder run: autoencoder.json, a checkpoint with a fresh optimiser state and, if given,
  latent_scale.json with ``scale_factor`` (SD: 0.18215), so config.latent.autoencoder_workdir can
  name it. Returns ``workdir``/autoencoder."""
  out_dir = os.path.join(workdir, "autoencoder")
  _write_or_check_spec(out_dir, spec)
  state = init_state(jax.random.PRNGKey(0), spec, optax.adam(1e-4))
  replicated = distributed.replicated(distributed.data_mesh())
  params = {"autoencoder": jax.device_put(jax.tree.map(jnp.asarray, params), replicated),
            "logvar": jnp.zeros((), jnp.float32)}
  state = state.replace(step=jnp.asarray(step, jnp.int32), params=params,
                        opt_state=optax.adam(1e-4).init(params))
  ckpts = checkpointing.TrainCheckpoints(out_dir)
  ckpts.save(step, state, snapshot=True)
  ckpts.wait_until_finished()
  ckpts.close()
  if scale_factor is not None and jax.process_index() == 0:
    atomic_json(os.path.join(out_dir, SCALE_FILE),
                {"scale_factor": float(scale_factor), "step": step, "source": "given at import"})
  return out_dir

