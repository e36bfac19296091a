"""The immutable `Experiment`: what a config describes, built once by `builders.build_experiment`."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from score_sde.diffusion.sde import SDE
from score_sde.experiment import distributed, optim, training
from score_sde.experiment.guidance import Guidance
from score_sde.io import checkpointing, datasets


@dataclasses.dataclass(frozen=True)
class DataOptions:
  dataset: str  # config.data.dataset, for messages
  tag: str  # file-name-safe name of the data, e.g. 'lsun-church_outdoor'
  image_size: int
  num_channels: int
  centered: bool


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """The training loop's schedule (config.training), EMA (config.model) and learning rate (config.optim)."""
  batch_size: int
  n_iters: int
  n_jitted_steps: int
  log_freq: int
  eval_freq: int
  snapshot_freq: int
  snapshot_freq_for_preemption: int
  snapshot_sampling: bool
  snapshot_num_samples: int
  ema_rate: float
  ema_warmup: bool
  lr: float
  warmup: int
  init_from: str | None = None  # a workdir whose newest EMA parameters start a fresh run


@dataclasses.dataclass(frozen=True)
class ClassifierOptions:
  """Training of the noise-conditional classifier (config.classifier)."""
  num_classes: int
  n_iters: int
  batch_size: int
  lr: float
  warmup: int
  log_freq: int
  eval_freq: int
  snapshot_freq: int

  def optimizer(self) -> optax.GradientTransformation:
    return optim.get_optimizer(lr=self.lr, warmup=self.warmup, grad_clip=1.0)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """Which snapshots to evaluate and how (config.eval)."""
  begin_ckpt: int
  end_ckpt: int
  snapshot_freq: int  # config.training.snapshot_freq: checkpoint c is step c * snapshot_freq
  checkpoint_timeout_s: float
  batch_size: int
  enable_loss: bool
  enable_bpd: bool
  enable_sampling: bool
  num_samples: int
  bpd_dataset: str
  bpd_num_repeats: int
  bpd_rtol: float
  bpd_atol: float
  bpd_step_control: str  # 'per_sample' or 'batch' (samplers.likelihood.log_likelihood)
  enable_precision_recall: bool
  inception_batch_size: int


@dataclasses.dataclass(frozen=True)
class ReferenceOptions:
  """The Inception reference statistics of FID/KID (config.eval.fid_stats_*)."""
  path: str | None  # None: a name under <workdir>/fid_stats
  split: str
  num_images: int  # 0: all
  batch_size: int


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Mesh, SDE, model, optimiser, losses, sampler and options of one config; never mutated."""
  mesh: Mesh
  sde: SDE
  module: nn.Module
  num_classes: int  # of the score network; 0 when unconditional
  model_fn: Callable  # takes class_labels when num_classes > 0
  unconditional_model_fn: Callable  # the null class of a class-conditional network
  # (model_fn, params, class_labels=None) -> a score function or Denoiser, per the training
  # objective (parametrization.sampling_model).
  network_model: Callable
  optimizer: optax.GradientTransformation
  scaler: Callable
  inverse_scaler: Callable
  seed: int
  root_key: jax.Array
  train_key: jax.Array
  eval_key: jax.Array
  sample_key: jax.Array
  init_state: Callable[[], training.TrainState]
  train_loss: Callable
  eval_loss: Callable
  guidance: Guidance
  sampler: Callable  # (key, params, batch_size, labels, classifier_params) -> (x, info)
  # What the sampler's output depends on besides the key and params: method, options, guidance,
  # seed. Stored with sample shards, so shards of another sampler are never reused.
  sampler_spec: dict
  pc_options: dict  # keyword options of sample_pc, for inpainting and colorization
  classifier_module: nn.Module
  classifier_fn: Callable  # (params, x_in, sigma) -> logits
  dataset: Callable  # (split=, batch_size=, ...) -> datasets.BatchIterator
  data: DataOptions
  training: TrainOptions
  classifier: ClassifierOptions | None
  eval: EvalOptions
  reference: ReferenceOptions
  # Latent diffusion (experiment/latent.py): the autoencoder whose scaled latents the score model
  # sees; losses encode, samplers decode. None in pixel space.
  latent: Any = None
  # Super-resolution (experiment/super_resolution.py): the network also takes the low-resolution
  # image; None otherwise.
  super_resolution: Any = None
  # ControlNet (experiment/controlnet.py): the `ControlSpec`; params are {'base', 'controlnet'} and
  # the sampler takes control images. None otherwise.
  controlnet: Any = None
  _test_images: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
  _compiled: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def compiled(self, name: str, build: Callable[[], Callable]) -> Callable:
    """The function ``build()`` made once per experiment (e.g. a jitted evaluation reused by every
    checkpoint of an evaluation run)."""
    if name not in self._compiled:
      self._compiled[name] = build()
    return self._compiled[name]

  @property
  def replicated(self) -> NamedSharding:
    return distributed.replicated(self.mesh)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.data.image_size, self.data.image_size, self.data.num_channels)

  @property
  def model_shape(self) -> tuple[int, int, int]:
    """[H, W, C] of the score network's input: the image, or its latent in latent diffusion."""
    return self.latent.shape if self.latent is not None else self.image_shape

  def require_pixel_space(self, what: str) -> None:
    """Refuses ``what`` (a mode working on images directly) for a latent-diffusion experiment."""
    if self.latent is not None:
      raise ValueError(f"{what} works in image space, but this config trains on the latents of "
                       f"{self.latent.workdir} (config.latent.autoencoder_workdir); use a "
                       "pixel-space config.")

  def unconditional_model(self, params):
    """The sampler-ready model of ``params``; a class-conditional network uses its null class."""
    return self.network_model(self.unconditional_model_fn, params)

  def abstract_state(self):
    return checkpointing.abstract_like(jax.eval_shape(self.init_state), self.replicated)

  def to_global(self, local: np.ndarray, batch_axis: int = 0) -> jax.Array:
    return distributed.global_array(local, distributed.batch_sharding(self.mesh, batch_axis),
                                    batch_axis)

  def model_batch(self, images: np.ndarray, labels: np.ndarray,
                  noise: np.ndarray | None = None) -> dict:
    """The loss input: scaled 'image', for a class-conditional model checked 'label', and the
    'noise' of (noise, data) couplings when the data has it (a pairs dataset)."""
    batch = {"image": self.scaler(images)}
    if noise is not None:
      batch["noise"] = noise
    if self.num_classes:
      batch["label"] = check_class_labels(labels, self.num_classes, "config.model.num_classes",
                                          self.data.dataset)
    return batch

  def generate(self, key, params, batch_size: int, offset: int = 0, classifier_params: Any = None,
               low_res: Any = None, control: Any = None):
    """A batch of the configured sampler, guided per ``self.guidance``.

    A super-resolution model upsamples ``low_res`` [B, H/f, W/f, C] (model space); without it, the
    downsampled test images ``offset``..``offset + B`` (cycling), whose outputs FDD/FID then judge.
    A ControlNet model follows the control images ``control`` [B, H, W, C_c]; without them, the
    controls of those test images.

    Returns (x [B, H, W, C] in model space, decoded in latent diffusion; class labels [B] or None). ``offset`` is the index of
    the batch's first sample in the run, so cycling labels stay balanced across batches.
    """
    labels = self.guidance.labels(batch_size, offset)
    if self.guidance.kind == "classifier" and classifier_params is None:
      raise ValueError("config.sampling.guidance='classifier' needs the classifier of this workdir: "
                       "run --mode train_classifier first.")
    if self.super_resolution is not None and low_res is None:
      low_res = self.super_resolution.downsample(self.scaler(self.test_images(offset, batch_size)))
    extra = {} if low_res is None else {"low_res": jax.numpy.asarray(low_res)}
    if self.controlnet is not None:
      if control is None:
        control = self.controlnet.control(jax.numpy.asarray(self.test_images(offset, batch_size)))
      extra["control"] = jax.numpy.asarray(control)
    x, _ = self.sampler(key, params, batch_size, labels, classifier_params, **extra)
    return x, labels

  def test_images(self, offset: int, n: int) -> np.ndarray:
    """Test-split images offset..offset + n ([0, 1], cycling over the split), read once."""
    if "all" not in self._test_images:
      with self.dataset(split="test", batch_size=self.eval.batch_size, num_epochs=1,
                        evaluation=True, drop_remainder=False) as it:
        self._test_images["all"] = np.concatenate([b["image"][b["mask"]] for b in it])
    images = self._test_images["all"]
    return images[np.arange(offset, offset + n) % len(images)]


def check_class_labels(labels: np.ndarray, num_classes: int, field: str, dataset: str) -> np.ndarray:
  """Labels int [...] in 0..num_classes-1, or a ValueError naming ``dataset`` and ``field``."""
  if np.any(labels < 0):
    raise ValueError(f"{field}={num_classes} needs class labels, but config.data.dataset="
                     f"{dataset!r} gives unlabelled images (label {datasets.NO_LABEL}); use a "
                     f"labelled dataset or set {field}=0.")
  if np.any(labels >= num_classes):
    raise ValueError(f"The data has label {int(labels.max())}, but {field}={num_classes}; set "
                     f"{field} to the number of classes of config.data.dataset={dataset!r}.")
  return labels.astype(np.int32)
