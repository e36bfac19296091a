"""ControlNet experiments (Zhang, Rao & Agrawala 2023): a frozen trained score model steered by a
control image, on every SDE, objective and sampler.

The network is `models.controlnet.ControlledModel`: parameters {'base': the trained model's, frozen,
'controlnet': the trainable copy of its encoder, hint encoder and zero convolutions}. What this
module adds around it:
* control types: functions image batch [B, H, W, C] in [0, 1] -> control image (`CONTROL_TYPES`);
* training (`controlled_loss`): each batch's control images, replaced by zeros (the null control)
  with probability ``drop_prob`` per image so that guidance on the control is possible, and the
  base parameters under stop_gradient; `freeze_base` masks the optimiser so no optimiser state is
  spent on them (optax.multi_transform with set_to_zero);
* sampling (`bind`): the control image and ``control_scale`` bound into a model_fn of the common
  signature, with guidance (1 + w) f(c) - w f(0) on the control when ``guidance_scale`` w > 0;
* `adherence`: the correlation between a sample's Sobel edges and its control (the digits task);
* `--mode sample --control FOLDER` (`sample_under_control`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

log = logging.getLogger(__name__)


def sobel_edges(images):
  """Sobel gradient magnitude of the grey level, [B, H, W, C] in [0, 1] -> [B, H, W, 1] in [0, 1]
  (divided by its largest possible value 4√2; edge-replicated borders)."""
  grey = jnp.mean(images, axis=-1)
  padded = jnp.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
  window = lambda dy, dx: padded[:, 1 + dy:padded.shape[1] - 1 + dy, 1 + dx:padded.shape[2] - 1 + dx]
  gx = (window(-1, 1) + 2 * window(0, 1) + window(1, 1)
        - window(-1, -1) - 2 * window(0, -1) - window(1, -1))
  gy = (window(1, -1) + 2 * window(1, 0) + window(1, 1)
        - window(-1, -1) - 2 * window(-1, 0) - window(-1, 1))
  return (jnp.sqrt(gx ** 2 + gy ** 2 + 1e-12) / (4.0 * np.sqrt(2.0)))[..., None]


# config.controlnet.control_type -> (image batch in [0, 1] -> control image, its channels)
CONTROL_TYPES = {"sobel_edges": (sobel_edges, 1)}


@dataclasses.dataclass(frozen=True)
class ControlSpec:
  control_type: str
  drop_prob: float  # training: probability of the null (all-zero) control per image
  control_scale: float  # sampling: multiplies the residuals
  guidance_scale: float  # sampling: w of the guidance on the control

  @property
  def channels(self) -> int:
    return CONTROL_TYPES[self.control_type][1]

  def control(self, images):
    """The control images of an image batch in [0, 1]."""
    return CONTROL_TYPES[self.control_type][0](images)

  def training_control(self, key, images):
    """Control images of a training batch, each replaced by zeros with probability drop_prob."""
    control = self.control(images)
    keep = jax.random.uniform(key, images.shape[:1]) >= self.drop_prob
    return jnp.where(keep[:, None, None, None], control, 0.0)

  def describe(self) -> dict:
    return {"control_type": self.control_type, "control_scale": self.control_scale,
            "guidance_scale": self.guidance_scale}


def bind(model_fn: Callable, hint, control_scale: float = 1.0,
         guidance_scale: float = 0.0) -> Callable:
  """``model_fn`` of a ControlledModel with the control image ``hint`` bound: a model_fn of the
  common signature. With ``guidance_scale`` w > 0, (1 + w) f(hint) - w f(null control)."""

  def controlled(params, x, labels, **kwargs):
    return model_fn(params, x, labels, hint=hint, control_scale=control_scale, **kwargs)

  if not guidance_scale:
    return controlled

  def guided(params, x, labels, **kwargs):
    null = model_fn(params, x, labels, hint=jnp.zeros_like(hint), control_scale=control_scale,
                    **kwargs)
    return (1.0 + guidance_scale) * controlled(params, x, labels, **kwargs) - guidance_scale * null

  return guided


def controlled_loss(build_loss: Callable[[Callable], Callable], model_fn: Callable,
                    spec: ControlSpec, inverse_scaler: Callable) -> Callable:
  """The objective ``build_loss(model_fn)`` of a ControlledModel: each batch's images (model space)
  give the control images, drawn with the first half of the loss's key; the base parameters are
  constants, so no gradient is computed for them."""

  def loss(params, key, images, *args, **kwargs):
    drop_key, key = jax.random.split(key)
    hint = spec.training_control(drop_key, inverse_scaler(images))
    params = {**params, "base": jax.lax.stop_gradient(params["base"])}
    return build_loss(bind(model_fn, hint))(params, key, images, *args, **kwargs)

  return loss


def freeze_base(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """``optimizer`` on params['controlnet'] only; params['base'] gets zero updates and no state."""
  labels = lambda params: {k: jax.tree.map(lambda _: "frozen" if k == "base" else "trained", v)
                           for k, v in params.items()}
  return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)


def load_base_params(config):
  """The newest EMA parameters of config.controlnet.base_workdir, the frozen base model. Its
  recorded config (config.json) must have this config's model, SDE, objective and data shape; its
  optimiser settings are read from the record, so the checkpoint restores whatever they were."""
  import ml_collections  # pylint: disable=import-outside-toplevel

  from score_sde.experiment import builders  # pylint: disable=import-outside-toplevel
  from score_sde.experiment.restore import warm_start_params  # pylint: disable=import-outside-toplevel

  workdir = config.controlnet.base_workdir
  base_config = ml_collections.ConfigDict(config.to_dict())
  base_config.controlnet.control_type = ""
  record_path = os.path.join(workdir, "config.json")
  if os.path.exists(record_path):
    with open(record_path) as f:
      record = json.load(f)
    refused, _, changed = builders.config_changes(record, base_config)
    refused = [k for k in refused if not k.startswith("controlnet.")]
    if refused:
      raise ValueError(f"config.controlnet.base_workdir={workdir!r} was trained with another model "
                       f"or SDE: {', '.join(f'config.{k}: {changed[k][0]!r} there, {changed[k][1]!r} here' for k in refused)}. "
                       "Use the base run's config with a controlnet section.")
    if isinstance(record.get("optim"), dict):
      base_config.optim = ml_collections.ConfigDict(record["optim"])
  base_config.eval.enable_bpd = False
  return warm_start_params(builders.build_experiment(base_config), workdir)


def adherence(samples, controls, spec: ControlSpec) -> np.ndarray:
  """Per-sample Pearson correlation [B] between the control of each sample (images in [0, 1]) and
  its control image."""
  a = np.asarray(spec.control(jnp.asarray(samples)), np.float64).reshape(len(samples), -1)
  b = np.asarray(controls, np.float64).reshape(len(samples), -1)
  a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
  return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)


def read_controls(folder: str, size: int, channels: int) -> np.ndarray:
  """The control images under ``folder`` (PNG/JPEG, sorted by name) [n, size, size, channels] in
  [0, 1], resized to the model's image size."""
  from score_sde.io import datasets  # pylint: disable=import-outside-toplevel

  files = datasets.list_image_files(folder)
  images = [datasets.read_image(f, channels) for f in files]
  return np.stack([img if img.shape[0] == size else datasets.resize(img, size, size)
                   for img in images]).astype(np.float32)


def sample_under_control(config, workdir: str, folder: str) -> str:
  """--mode sample --control FOLDER: one sample per control image of ``folder`` from the newest
  checkpoint, into workdir/samples/control_<step>_<digest>/ (samples.npz, samples.png and
  controls.png, the controls as used)."""
  from score_sde.experiment import builders  # pylint: disable=import-outside-toplevel
  from score_sde.experiment.restore import latest_params  # pylint: disable=import-outside-toplevel
  from score_sde.io import logging_utils  # pylint: disable=import-outside-toplevel

  exp = builders.build_experiment(config)
  if exp.controlnet is None:
    raise ValueError("--control needs a ControlNet config (config.controlnet.control_type set), "
                     "e.g. configs/digits/controlnet_edges.py.")
  controls = read_controls(folder, exp.data.image_size, exp.controlnet.channels)
  step, params = latest_params(exp, workdir)
  spec = {**exp.sampler_spec, "control_folder": os.path.abspath(folder)}
  digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
  out_dir = os.path.join(workdir, "samples", f"control_{step}_{digest}")
  os.makedirs(out_dir, exist_ok=True)
  b = exp.eval.batch_size
  key = jax.random.fold_in(exp.sample_key, step)
  outputs = []
  for r in range(-(-len(controls) // b)):
    chunk = controls[r * b:(r + 1) * b]
    padded = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), chunk.dtype)])
    x, _ = exp.generate(jax.random.fold_in(key, r), params, b, offset=r * b, control=padded)
    outputs.append(np.clip(np.asarray(exp.inverse_scaler(x)), 0.0, 1.0)[:len(chunk)])
  samples = np.concatenate(outputs)
  score = adherence(samples, controls, exp.controlnet)
  np.savez(os.path.join(out_dir, "samples.npz"), samples=np.round(samples * 255).astype(np.uint8),
           controls=controls, adherence=score)
  logging_utils.save_image_grid(controls[:64], os.path.join(out_dir, "controls.png"))
  path = os.path.join(out_dir, "samples.png")
  logging_utils.save_image_grid(samples[:64], path)
  log.info("Wrote %d samples under the controls of %s to %s (mean adherence %.3f)", len(samples),
           folder, out_dir, float(score.mean()))
  return path
