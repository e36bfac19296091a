"""Training, evaluation and sampling runs driven by a config: what ``main.py`` calls."""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.io import checkpointing, datasets, logging_utils
from score_sde.experiment import config_utils, distributed, from_config, training
from score_sde.experiment import classifier_training, optim
from score_sde.metrics import convert_inception, fid
from score_sde.metrics import evaluate as sample_quality
from score_sde.metrics import features as inception_features

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


# --- setup shared by every mode ------------------------------------------------------------

class Experiment:
  """The objects a config describes: mesh, SDE, model, optimiser and the (abstract) train state."""

  def __init__(self, config):
    self.config = config
    self.mesh = distributed.data_mesh()
    self.replicated = distributed.replicated(self.mesh)
    self.sde = from_config.get_sde(config)
    self.module = from_config.get_model(config)
    self.num_classes = config_utils.num_classes(config)
    # model_fn takes class_labels when num_classes > 0; sampling and bits/dim use the null class.
    self.model_fn = training.linen_model_fn(self.module)
    self.unconditional_model_fn = (
        training.null_class_model_fn(self.model_fn, self.num_classes) if self.num_classes
        else self.model_fn)
    self.optimizer = config_utils.get_optimizer(config)
    self.scaler = from_config.get_data_scaler(config)
    self.inverse_scaler = from_config.get_data_inverse_scaler(config)
    self.root_key = jax.random.PRNGKey(config.seed)
    init_key, self.train_key, self.eval_key, self.sample_key = jax.random.split(self.root_key, 4)
    init_shape = config_utils.image_shape(config, 1)
    init = jax.jit(lambda k: training.init_train_state(k, self.module, self.optimizer, init_shape,
                                                       self.num_classes),
                   out_shardings=self.replicated)
    self._init = lambda: init(init_key)
    self._samplers = {}
    self.classifier_module = from_config.get_classifier(config)
    self.classifier_params = None

  def sampler(self, batch_size: int):
    """The configured sampler for ``batch_size`` images, built once (``config_utils.get_sampler``)."""
    if batch_size not in self._samplers:
      shape = config_utils.image_shape(self.config, batch_size)
      classifier_fn = (classifier_training.get_classifier_fn(self.classifier_module)
                       if self.config.sampling.guidance == "classifier" else None)
      self._samplers[batch_size] = config_utils.get_sampler(self.config, self.sde, self.model_fn,
                                                            shape, classifier_fn)
    return self._samplers[batch_size]

  def generate(self, key, params, batch_size: int, offset: int = 0):
    """A batch of the configured sampler, guided per ``config.sampling.guidance``.

    Returns (x [B, H, W, C] in model space, class labels [B] or None). ``offset`` is the index of
    the batch's first sample in the run, so cycling labels stay balanced across batches.
    """
    labels = config_utils.sample_labels(self.config, batch_size, offset)
    if self.config.sampling.guidance == "classifier" and self.classifier_params is None:
      raise ValueError("config.sampling.guidance='classifier' needs the classifier of this workdir: "
                       "run --mode train_classifier first.")
    x, _ = self.sampler(batch_size)(key, params, labels, self.classifier_params)
    return x, labels

  def load_classifier(self, workdir: str) -> None:
    """Restores the newest classifier of ``workdir/classifier`` for classifier guidance."""
    self.classifier_params = load_classifier_params(self, workdir)[1]

  def fresh_state(self) -> training.TrainState:
    return self._init()

  def abstract_state(self):
    return checkpointing.abstract_like(jax.eval_shape(self._init))

  def to_global(self, local: np.ndarray, batch_axis: int = 0) -> jax.Array:
    return distributed.global_array(local, distributed.batch_sharding(self.mesh, batch_axis),
                                    batch_axis)

  def model_batch(self, images: np.ndarray, labels: np.ndarray) -> dict:
    """The loss input: scaled 'image' and, for a class-conditional model, checked 'label'."""
    batch = {"image": self.scaler(images)}
    if self.num_classes:
      batch["label"] = check_class_labels(self.config, labels, self.num_classes,
                                          "config.model.num_classes")
    return batch


def _stacked_batches(it: Iterator[dict], k: int) -> tuple[np.ndarray, np.ndarray]:
  """Stacks k consecutive batches: images [k, B_local, H, W, C] and labels [k, B_local]."""
  batches = [next(it) for _ in range(k)]
  return np.stack([b["image"] for b in batches]), np.stack([b["label"] for b in batches])


def check_class_labels(config, labels: np.ndarray, num_classes: int, field: str) -> np.ndarray:
  """Labels int [...] in 0..num_classes-1, or a ValueError naming the dataset and ``field``."""
  if np.any(labels < 0):
    raise ValueError(f"{field}={num_classes} needs class labels, but config.data.dataset="
                     f"{config.data.dataset!r} gives unlabelled images (label "
                     f"{datasets.NO_LABEL}); use a labelled dataset or set {field}=0.")
  if np.any(labels >= num_classes):
    raise ValueError(f"The data has label {int(labels.max())}, but {field}={num_classes}; set "
                     f"{field} to the number of classes of config.data.dataset="
                     f"{config.data.dataset!r}.")
  return labels.astype(np.int32)


def _crossed(prev_step: int, step: int, freq: int) -> bool:
  return freq > 0 and step // freq > prev_step // freq


# --- training ------------------------------------------------------------------------------

def train(config, workdir: str) -> training.TrainState:
  """Trains from scratch or resumes from the newest checkpoint in ``workdir``."""
  cfg = config.training
  distributed.check_batch_size(cfg.batch_size)
  if config.sampling.guidance == "classifier":
    # The classifier is trained separately (often later): snapshot grids are unguided.
    config = copy.deepcopy(config)
    config.sampling.guidance = "none"
  exp = Experiment(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  writer = logging_utils.MetricWriter(os.path.join(workdir, "tensorboard"))
  ckpts = checkpointing.TrainCheckpoints(workdir)

  state = ckpts.restore_latest(exp.abstract_state()) or exp.fresh_state()
  initial_step = int(state.step)
  if initial_step:
    log.info("Resuming from step %d in %s", initial_step, workdir)

  k = cfg.n_jitted_steps
  train_loss = config_utils.get_loss_fn(config, exp.sde, exp.model_fn, train=True)
  train_step = jax.jit(
      training.make_train_step(train_loss, exp.optimizer, config.model.ema_rate,
                               config.model.ema_warmup),
      in_shardings=(exp.replicated, distributed.batch_sharding(exp.mesh, 1), exp.replicated),
      out_shardings=(exp.replicated, exp.replicated), donate_argnums=0)
  eval_loss = config_utils.get_loss_fn(config, exp.sde, exp.model_fn, train=False)
  eval_step = jax.jit(training.make_eval_step(eval_loss))
  train_iter = from_config.get_dataset(config, split="train", batch_size=cfg.batch_size,
                                       shuffle_seed=config.seed, start_step=initial_step)
  eval_iter = from_config.get_dataset(config, split="test", batch_size=cfg.batch_size,
                                      shuffle_seed=config.seed + 1, evaluation=True)
  schedule = optim.learning_rate_schedule(config.optim.lr, config.optim.warmup)

  step = initial_step
  bar = logging_utils.ProgressBar(total=cfg.n_iters, initial=step, desc="train",
                                  examples_per_step=cfg.batch_size)
  last_saved = initial_step if initial_step else None
  compiled = False
  try:
    while step < cfg.n_iters:
      batch = jax.tree.map(lambda a: exp.to_global(a, batch_axis=1),
                           exp.model_batch(*_stacked_batches(train_iter, k)))
      if not compiled:
        train_step = train_step.lower(state, batch, exp.train_key).compile()
        distributed.barrier("score_sde_train_step_compiled")
        compiled = True
      state, metrics = train_step(state, batch, exp.train_key)
      losses = np.asarray(metrics["loss"])
      prev, step = step, step + k
      if not np.all(np.isfinite(losses)):
        ckpts.wait_until_finished()
        where = (f"the last good checkpoint is step {last_saved} in {workdir}" if last_saved
                 else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"Loss became {losses[~np.isfinite(losses)][0]} between steps {prev} and {step}; "
            f"training stopped and {where}. Lower config.optim.lr, keep config.optim.grad_clip "
            f"positive, or check the data for NaNs.")
      bar.update(k, loss=float(losses[-1]))
      if _crossed(prev, step, cfg.log_freq) or step >= cfg.n_iters:
        grad_norm = float(np.asarray(metrics["grad_norm"])[-1])
        writer.scalars(step, {"training_loss": float(losses[-1]), "grad_norm": grad_norm,
                              "learning_rate": float(schedule(step - 1))})
        log.info("step %d: loss %.5f, grad norm %.3f", step, losses[-1], grad_norm)
      if _crossed(prev, step, cfg.eval_freq):
        batch = next(eval_iter)
        key = jax.random.fold_in(exp.eval_key, step)
        eval_losses = eval_step(state.ema_params,
                                jax.tree.map(jnp.asarray,
                                             exp.model_batch(batch["image"], batch["label"])), key)
        writer.scalars(step, {"eval_loss": float(jnp.mean(eval_losses))})
      snapshot = _crossed(prev, step, cfg.snapshot_freq) or step >= cfg.n_iters
      if snapshot or _crossed(prev, step, cfg.snapshot_freq_for_preemption):
        ckpts.save(step, state, snapshot=snapshot)
        last_saved = step
        if snapshot and cfg.snapshot_sampling:
          _write_sample_grid(exp, state.ema_params, step, workdir, writer)
  finally:
    bar.close()
    ckpts.wait_until_finished()
    ckpts.close()
    writer.close()
    train_iter.close()
    eval_iter.close()
  if is_main:
    log.info("Training finished at step %d", step)
  return state


def _write_sample_grid(exp: Experiment, params, step: int, workdir: str, writer) -> None:
  config = exp.config
  n = config.training.get("snapshot_num_samples", 64)
  samples, _ = exp.generate(jax.random.fold_in(exp.sample_key, step), params, n)
  images = np.clip(np.asarray(exp.inverse_scaler(samples)), 0.0, 1.0)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "samples", f"iter_{step}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logging_utils.save_image_grid(images, path)
    writer.image_grid(step, "samples", images)


# --- evaluation ----------------------------------------------------------------------------

def _atomic_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _atomic_npz(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def _test_loss(exp: Experiment, params, key) -> float:
  config = exp.config
  loss_fn = config_utils.get_loss_fn(config, exp.sde, exp.model_fn, train=False)
  eval_step = jax.jit(training.make_eval_step(loss_fn))
  total, count = 0.0, 0
  with from_config.get_dataset(config, split="test", batch_size=config.eval.batch_size, num_epochs=1,
                               evaluation=True, drop_remainder=False) as it:
    for i, batch in enumerate(it):
      model_batch = jax.tree.map(jnp.asarray, exp.model_batch(batch["image"], batch["label"]))
      losses = np.asarray(eval_step(params, model_batch, jax.random.fold_in(key, i)))
      total += float(losses[batch["mask"]].sum())
      count += int(batch["mask"].sum())
  return total / count


def _test_bpd(exp: Experiment, params, key) -> float:
  """Bits/dim of the test split with uniform dequantization, repeated eval.bpd_num_repeats times."""
  from score_sde.samplers import likelihood
  from score_sde.diffusion import sde as sde_module

  config = exp.config
  score_fn = sde_module.get_score_fn(exp.sde, exp.unconditional_model_fn, params,
                                     continuous=config.training.continuous)
  bpd_fn = jax.jit(lambda k, x: likelihood.bits_per_dim(
      k, score_fn, exp.sde, x, centered=config.data.centered, dequantize=True,
      n_repeats=config.eval.get("bpd_num_repeats", 5), rtol=config.eval.get("bpd_rtol", 1e-5),
      atol=config.eval.get("bpd_atol", 1e-5))[0])
  values = []
  with from_config.get_dataset(config, split=config.eval.get("bpd_dataset", "test"),
                               batch_size=config.eval.batch_size, num_epochs=1, evaluation=True,
                               drop_remainder=False) as it:
    bar = logging_utils.ProgressBar(total=len(it), desc="bits/dim")
    for i, batch in enumerate(it):
      bpd = np.asarray(bpd_fn(jax.random.fold_in(key, i), jnp.asarray(batch["image"])))
      values.append(bpd[batch["mask"]])
      bar.update(1)
    bar.close()
  return float(np.mean(np.concatenate(values)))


def _sample_rounds(exp: Experiment, params, key, out_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """config.eval.num_samples samples in rounds of eval.batch_size, one .npz shard per round.

  Returns uint8 samples [n, H, W, C] and their class labels [n] (-1 when unguided). A shard already
  on disk is kept, so an interrupted evaluation resumes where it stopped.
  """
  config = exp.config
  n, b = config.eval.num_samples, config.eval.batch_size
  shards, shard_labels = [], []
  bar = logging_utils.ProgressBar(total=-(-n // b), desc="sampling")
  for r in range(-(-n // b)):
    path = os.path.join(out_dir, f"samples_{r}.npz")
    if not os.path.exists(path):
      x, labels = exp.generate(jax.random.fold_in(key, r), params, b, offset=r * b)
      images = np.clip(np.asarray(exp.inverse_scaler(x)), 0.0, 1.0)
      labels = np.full((b,), datasets.NO_LABEL, np.int32) if labels is None else labels
      _atomic_npz(path, samples=np.round(images * 255).astype(np.uint8), labels=labels)
    with np.load(path) as shard:
      shards.append(shard["samples"])
      shard_labels.append(shard["labels"])
    bar.update(1)
  bar.close()
  return np.concatenate(shards)[:n], np.concatenate(shard_labels)[:n]


# --- Inception reference statistics (FID, KID, IS) -------------------------------------------

def _dataset_tag(config) -> str:
  """A file-name-safe name of the configured data, e.g. 'cifar10', 'lsun-church_outdoor'."""
  data = config.data
  name = data.dataset.lower()
  detail = {"lsun": data.get("category"), "tfds": data.get("tfds_name"),
            "folder": os.path.basename(os.path.normpath(data.path)) if data.get("path") else None}.get(name)
  return (f"{name}-{detail}" if detail else name).replace("/", "-")


def fid_stats_path(config, workdir: str) -> str:
  """config.eval.fid_stats_path, else <workdir>/fid_stats/<dataset>_<split>_<size>[_n<cap>].npz."""
  if config.eval.fid_stats_path:
    return config.eval.fid_stats_path
  cap = config.eval.fid_stats_num_images
  name = f"{_dataset_tag(config)}_{config.eval.fid_stats_split}_{config.data.image_size}"
  return os.path.join(workdir, "fid_stats", name + (f"_n{cap}" if cap else "") + ".npz")


def _pool3_path(stats_path: str) -> str:
  return os.path.splitext(stats_path)[0] + "_pool3.npy"


def _description_path(stats_path: str) -> str:
  return os.path.splitext(stats_path)[0] + ".json"


def _reference_description(config) -> dict:
  """What a statistics file must have been computed from to serve as this config's reference."""
  return {"dataset": _dataset_tag(config), "split": config.eval.fid_stats_split,
          "image_size": config.data.image_size, "num_channels": config.data.num_channels,
          "max_images": config.eval.fid_stats_num_images}


def _check_inception_fields(config) -> None:
  ev = config.eval
  if ev.fid_stats_split not in ("train", "test"):
    raise ValueError(f"config.eval.fid_stats_split={ev.fid_stats_split!r}; choose 'train' or 'test'.")
  if ev.fid_stats_num_images < 0:
    raise ValueError(f"config.eval.fid_stats_num_images={ev.fid_stats_num_images}; use >= 0 (0: all).")
  if ev.inception_batch_size <= 0:
    raise ValueError(f"config.eval.inception_batch_size={ev.inception_batch_size}; use a positive size.")


def _reference_images(config) -> Iterator[np.ndarray]:
  """Batches [b, H, W, C] in [0, 1] of the reference split, in dataset order, capped at
  eval.fid_stats_num_images (0: all); no flips, no dequantization noise."""
  cap, b = config.eval.fid_stats_num_images, config.eval.inception_batch_size
  with from_config.get_dataset(config, split=config.eval.fid_stats_split, batch_size=b,
                               process_index=0, process_count=1, num_epochs=1, evaluation=True,
                               uniform_dequantization=False, drop_remainder=False) as it:
    total = min(cap, it.num_examples) if cap else it.num_examples
    bar = logging_utils.ProgressBar(total=-(-total // b), desc="reference Inception features")
    seen = 0
    for batch in it:
      images = batch["image"][batch["mask"]][:total - seen]
      seen += len(images)
      yield images
      bar.update(1)
      if seen >= total:
        break
    bar.close()


def _compute_reference(config, weights) -> tuple[fid.FeatureStats, np.ndarray]:
  return inception_features.compute_dataset_stats_and_pool3(_reference_images(config), weights,
                                                            config.eval.inception_batch_size)


def _save_reference(config, path: str, stats: fid.FeatureStats, pool3: np.ndarray, weights) -> None:
  """Writes the pool_3 features and a JSON description, then the .npz, whose presence marks completion."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(_pool3_path(path) + ".tmp", "wb") as f:
    np.save(f, pool3)
  os.replace(_pool3_path(path) + ".tmp", _pool3_path(path))
  _atomic_json(_description_path(path), {
      **_reference_description(config), "num_images": stats.num_images,
      **inception_features.stats_provenance(weights), "weights_file": weights.source,
      "pool3_file": os.path.basename(_pool3_path(path))})
  stats.save(path + ".tmp")
  os.replace(path + ".tmp", path)


def _load_reference(config, path: str, weights) -> tuple[fid.FeatureStats, np.ndarray | None]:
  """Loads a statistics file after checking it was made with these weights from this config's data."""
  stats = fid.FeatureStats.load(path)
  rebuild = ("Delete it and run --mode fid_stats with the same --config and --inception_weights, or set "
             "config.eval.fid_stats_path to a matching file.")
  for field, expected in inception_features.stats_provenance(weights).items():
    found = getattr(stats, field)
    if found and found != expected:
      raise ValueError(f"The Inception statistics {path} have {field}={found!r}, but these weights give "
                       f"{expected!r} (weights file {weights.source}); FID between them is meaningless. {rebuild}")
  if not stats.weights_sha256:
    log.warning("%s records no Inception weights hash; assuming it was made with %s.", path, weights.source)
  if os.path.exists(_description_path(path)):
    with open(_description_path(path)) as f:
      recorded = json.load(f)
    expected = _reference_description(config)
    differ = {k: (recorded.get(k), v) for k, v in expected.items() if recorded.get(k) != v}
    if differ:
      raise ValueError(f"The Inception statistics {path} were computed from other data than the config "
                       f"describes ((file, config) per field: {differ}). {rebuild}")
  pool3 = np.load(_pool3_path(path)) if os.path.exists(_pool3_path(path)) else None
  return stats, pool3


def _inception_weights(inception_weights):
  """InceptionWeights as given, or loaded from a path (None: $SCORE_SDE_INCEPTION_WEIGHTS), hash-checked."""
  if isinstance(inception_weights, convert_inception.InceptionWeights):
    return inception_weights
  return convert_inception.load_inception_weights(inception_weights)


def fid_stats(config, workdir: str, inception_weights=None) -> str:
  """Inception reference statistics of the config's data for FID, and its pool_3 features for KID.

  Reads eval.fid_stats_split (at most eval.fid_stats_num_images images, 0 for all) through the same
  code path as samples (`metrics.features`), and writes `fid_stats_path(config, workdir)` (mu, sigma,
  num_images, feature space, resize mode, weights hash), `<stem>_pool3.npy` (float32 [N, 2048]) and
  `<stem>.json` (which data and weights). Every process computes the same numbers; process 0 writes.

  Args:
    inception_weights: path of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (None: read
      $SCORE_SDE_INCEPTION_WEIGHTS), checked against its published SHA-256; or loaded `InceptionWeights`.
  Returns:
    The path of the statistics file.
  """
  _check_inception_fields(config)
  weights = _inception_weights(inception_weights)
  path = fid_stats_path(config, workdir)
  stats, pool3 = _compute_reference(config, weights)
  if jax.process_index() == 0:
    _save_reference(config, path, stats, pool3, weights)
  log.info("Inception statistics of %d %s images written to %s", stats.num_images, _dataset_tag(config),
           path)
  return path


@dataclasses.dataclass(frozen=True)
class _InceptionReference:
  weights: convert_inception.InceptionWeights
  stats: fid.FeatureStats
  pool3: np.ndarray | None  # [N, 2048] reference features (KID, precision/recall), when stored


def _inception_reference(config, workdir: str, inception_weights) -> _InceptionReference | None:
  """Weights and reference statistics for FID/KID/IS, prepared before any sampling so a bad file fails
  in seconds; None (logged) when no weights are given. Missing statistics are computed and cached."""
  if not config.eval.enable_sampling:
    if inception_weights is not None:
      log.warning("Inception weights given, but config.eval.enable_sampling is False: no FID/KID/IS.")
    return None
  if inception_weights is None and not os.environ.get(convert_inception.INCEPTION_WEIGHTS_ENV):
    log.info("FID/KID/IS skipped: no Inception weights. To enable them, download %s (%s) and pass "
             "%s=PATH or set $%s.", convert_inception.INCEPTION_WEIGHTS_FILENAME,
             convert_inception.INCEPTION_WEIGHTS_URL, convert_inception.INCEPTION_WEIGHTS_FLAG,
             convert_inception.INCEPTION_WEIGHTS_ENV)
    return None
  _check_inception_fields(config)
  weights = _inception_weights(inception_weights)
  path = fid_stats_path(config, workdir)
  if os.path.exists(path):
    stats, pool3 = _load_reference(config, path, weights)
  else:
    log.info("No Inception statistics at %s: computing them once from the %r split.", path,
             config.eval.fid_stats_split)
    stats, pool3 = _compute_reference(config, weights)
    if jax.process_index() == 0:
      _save_reference(config, path, stats, pool3, weights)
  if pool3 is None:
    log.info("KID skipped: no reference pool_3 features %s next to %s (--mode fid_stats writes them).",
             _pool3_path(path), path)
  return _InceptionReference(weights, stats, pool3)


def sample_metrics(config, samples: np.ndarray, inception: _InceptionReference | None = None,
                    labels: np.ndarray | None = None) -> dict:
  """Sample quality of uint8 samples [N, H, W, C]: FID, IS (and KID, precision/recall when reference
  features exist) if Inception weights are given; for the built-in digits also the offline Fréchet
  Digits Distance to the test split and, for class-guided samples (labels >= 0), the fraction the
  project's digits classifier assigns to the requested class."""
  metrics = {}
  if inception is not None:
    results = sample_quality.evaluate_inception_metrics(
        samples, inception.weights, inception.stats, inception.pool3, seed=config.seed,
        batch_size=config.eval.inception_batch_size,
        pr_k=3 if config.eval.enable_precision_recall else None)
    metrics.update({name: result.as_dict() for name, result in results.items()})
  if config.data.dataset.lower() == "digits":
    from score_sde.metrics import digits_classifier as dc

    classifier = dc.train_digits_classifier(seed=0, image_size=config.data.image_size)
    _, (x_test, _) = dc.train_test_split(*dc.load_digits_images(config.data.image_size))
    result = dc.frechet_digits_distance(samples, x_test, classifier, seed=config.seed)
    metrics["fdd"] = result.as_dict()
    if labels is not None and np.all(labels >= 0):
      predicted = np.argmax(dc.classify_and_embed(samples, classifier)[0], axis=-1)
      metrics["class_accuracy"] = {"value": float(np.mean(predicted == labels)),
                                   "num_samples": int(len(labels)),
                                   "guidance": config.sampling.guidance,
                                   "guidance_scale": float(config.sampling.guidance_scale)}
  return metrics


def evaluate(config, workdir: str, eval_folder: str = "eval", inception_weights=None) -> dict:
  """Evaluates snapshots eval.begin_ckpt..eval.end_ckpt (step = ckpt * snapshot_freq) as they appear.

  Writes ``report_<step>.json`` per checkpoint; ``meta.json`` lists finished ones so a restarted
  evaluation skips them, and sample shards already written are reused. With Inception weights (a
  path, or $SCORE_SDE_INCEPTION_WEIGHTS; see `fid_stats`) the samples also get FID, IS and KID
  against the statistics at `fid_stats_path`, computed there first if missing.
  """
  inception = _inception_reference(config, workdir, inception_weights)
  exp = Experiment(config)
  if config.eval.enable_sampling and config.sampling.guidance == "classifier":
    exp.load_classifier(workdir)
  eval_dir = os.path.join(workdir, eval_folder)
  os.makedirs(eval_dir, exist_ok=True)
  meta_path = os.path.join(eval_dir, "meta.json")
  done = json.load(open(meta_path))["done"] if os.path.exists(meta_path) else []
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  reports = {}
  for ckpt in range(config.eval.begin_ckpt, config.eval.end_ckpt + 1):
    step = ckpt * config.training.snapshot_freq
    if step in done:
      continue
    if not ckpts.wait_for_snapshot(step, timeout_s=config.eval.get("checkpoint_timeout_s", 3600.0)):
      log.warning("Snapshot at step %d did not appear in %s; stopping evaluation.", step,
                  ckpts.snapshot_dir)
      break
    params = ckpts.restore_snapshot(step, exp.abstract_state()).ema_params
    key = jax.random.fold_in(exp.eval_key, step)
    report = {"step": step, "checkpoint": ckpt}
    if config.eval.enable_loss:
      report["eval_loss"] = _test_loss(exp, params, jax.random.fold_in(key, 0))
    if config.eval.enable_bpd:
      report["bpd"] = _test_bpd(exp, params, jax.random.fold_in(key, 1))
    if config.eval.enable_sampling:
      out_dir = os.path.join(eval_dir, f"ckpt_{ckpt}")
      os.makedirs(out_dir, exist_ok=True)
      samples, labels = _sample_rounds(exp, params, jax.random.fold_in(key, 2), out_dir)
      if jax.process_index() == 0:
        logging_utils.save_image_grid(samples[:64].astype(np.float32) / 255.0,
                                      os.path.join(out_dir, "samples.png"))
      report.update(sample_metrics(config, samples, inception, labels))
    if jax.process_index() == 0:
      _atomic_json(os.path.join(eval_dir, f"report_{step}.json"), report)
      done.append(step)
      _atomic_json(meta_path, {"done": done})
    log.info("Evaluation of step %d: %s", step, report)
    reports[step] = report
  ckpts.close()
  return reports


def latest_params(exp: Experiment, workdir: str):
  """(step, EMA params) of the newest checkpoint in ``workdir``."""
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  state = ckpts.restore_latest(exp.abstract_state())
  ckpts.close()
  if state is None:
    raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints or {workdir}/checkpoints-meta; "
                            "train first (--mode train) or point --workdir at a training run.")
  return int(state.step), state.ema_params


def sample(config, workdir: str) -> str:
  """Writes eval.num_samples samples of the newest checkpoint to workdir/samples/final_<step>.

  Class-guided when ``config.sampling.guidance`` is 'cfg' or 'classifier' (labels cycle through the
  classes unless ``sampling.class_label`` picks one; each shard stores its 'labels').
  """
  exp = Experiment(config)
  step, params = latest_params(exp, workdir)
  if config.sampling.guidance == "classifier":
    exp.load_classifier(workdir)
  out_dir = os.path.join(workdir, "samples", f"final_{step}")
  os.makedirs(out_dir, exist_ok=True)
  samples, _ = _sample_rounds(exp, params, jax.random.fold_in(exp.sample_key, step), out_dir)
  path = os.path.join(out_dir, "samples.png")
  logging_utils.save_image_grid(samples[:64].astype(np.float32) / 255.0, path)
  log.info("Wrote %d samples and %s", len(samples), path)
  return path


def likelihood(config, workdir: str) -> float:
  """Bits/dim of the newest checkpoint on the test split; written to workdir/likelihood_<step>.json."""
  exp = Experiment(config)
  step, params = latest_params(exp, workdir)
  bpd = _test_bpd(exp, params, jax.random.fold_in(exp.eval_key, step))
  _atomic_json(os.path.join(workdir, f"likelihood_{step}.json"), {"step": step, "bpd": bpd})
  log.info("bits/dim at step %d: %.4f", step, bpd)
  return bpd


# --- controllable generation on trained checkpoints -----------------------------------------

def _hidden_center(s):
  q = s // 4
  return np.s_[q:s - q, q:s - q]


# Built-in inpainting masks, named by the region that is generated: (size) -> index of that region.
MASK_REGIONS = {
    "center": _hidden_center,
    "left": lambda s: np.s_[:, :s // 2],
    "right": lambda s: np.s_[:, s // 2:],
    "top": lambda s: np.s_[:s // 2, :],
    "bottom": lambda s: np.s_[s // 2:, :],
}


def load_mask(mask: str, image_size: int) -> np.ndarray:
  """Inpainting mask [S, S, 1]: 1 keeps the input pixel, 0 generates it.

  ``mask`` is a name in ``MASK_REGIONS`` (the region to generate) or an image file, where white
  (>= 0.5 after conversion to gray) keeps and black generates; it is resized (nearest) to S x S.
  """
  if mask in MASK_REGIONS:
    keep = np.ones((image_size, image_size, 1), np.float32)
    keep[MASK_REGIONS[mask](image_size)] = 0.0
    return keep
  if not os.path.isfile(mask):
    raise FileNotFoundError(f"--mask={mask!r} is neither a built-in mask {sorted(MASK_REGIONS)} "
                            "nor an image file (white keeps a pixel, black generates it).")
  gray = datasets.resize(datasets.read_image(mask, 1), image_size, image_size, method="nearest")
  return (gray >= 0.5).astype(np.float32)


def _read_inputs(config, input_path: str, num_channels: int) -> tuple[list[str], np.ndarray]:
  """The images under ``input_path``, centrally cropped and resized: (files, [n, S, S, C] in [0, 1])."""
  files = datasets.list_image_files(input_path)
  size = config.data.image_size
  images = [datasets.crop_resize(datasets.read_image(f, num_channels), size) for f in files]
  return files, np.stack(images)


def _in_batches(fn, key, inputs: np.ndarray, batch_size: int) -> np.ndarray:
  """fn(key_i, batch [batch_size, ...]) over inputs, the last batch padded (one compilation)."""
  outputs = []
  for i, start in enumerate(range(0, len(inputs), batch_size)):
    chunk = inputs[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:],
                                              chunk.dtype)])
    outputs.append(np.asarray(fn(jax.random.fold_in(key, i), jnp.asarray(padded)))[:len(chunk)])
  return np.concatenate(outputs)


def _write_results(out_dir: str, files: list[str], rows: list[np.ndarray]) -> str:
  """Writes rows[-2] (the results) per input file and a grid of all rows; returns the grid path."""
  if jax.process_index() != 0:
    return os.path.join(out_dir, "grid.png")
  os.makedirs(out_dir, exist_ok=True)
  for f, image in zip(files, rows[-2]):
    name = os.path.splitext(os.path.basename(f))[0] + ".png"
    logging_utils.save_image_grid(image[None], os.path.join(out_dir, name), nrow=1, padding=0)
  n = min(len(files), 16)
  grid = np.concatenate([r[:n] for r in rows])  # one row of n images per kind
  path = os.path.join(out_dir, "grid.png")
  logging_utils.save_image_grid(grid, path, nrow=n)
  return path


def _controllable_setup(config, workdir: str):
  from score_sde.diffusion import sde as sde_module

  exp = Experiment(config)
  step, params = latest_params(exp, workdir)
  continuous = config.training.continuous
  # Unguided: a class-conditional network fills in with its null class.
  score_of = lambda p: sde_module.get_score_fn(exp.sde, exp.unconditional_model_fn, p,
                                               continuous=continuous)
  return exp, step, params, score_of


def inpaint(config, workdir: str, input_path: str, mask: str) -> str:
  """Inpaints every image under ``input_path`` with the newest checkpoint (PC with replacement).

  Writes workdir/inpainting/<mask name>_<step>/<file>.png and grid.png (rows: masked input,
  result, input). Sampler options come from config.sampling (PC fields).
  """
  from score_sde.samplers import controllable

  exp, step, params, score_of = _controllable_setup(config, workdir)
  files, images = _read_inputs(config, input_path, config.data.num_channels)
  keep = load_mask(mask, config.data.image_size)
  options = config_utils.pc_options(config)

  @jax.jit
  def run(key, data):
    x, _ = controllable.inpaint(key, score_of(params), exp.sde, exp.scaler(data), keep, **options)
    return jnp.clip(exp.inverse_scaler(x), 0.0, 1.0)

  key = jax.random.fold_in(jax.random.fold_in(exp.sample_key, step), 1)
  results = _in_batches(run, key, images, config.eval.batch_size)
  tag = os.path.splitext(os.path.basename(mask))[0]
  out_dir = os.path.join(workdir, "inpainting", f"{tag}_{step}")
  path = _write_results(out_dir, files, [images * keep, results, images])
  log.info("Inpainted %d images (mask %s) into %s", len(files), mask, out_dir)
  return path


def colorize(config, workdir: str, input_path: str) -> str:
  """Colorizes the gray versions of the images under ``input_path`` with the newest checkpoint.

  Colour inputs are turned to gray (channel mean) first. Writes workdir/colorization_<step>/
  <file>.png and grid.png (rows: gray input, result, input).
  """
  from score_sde.samplers import controllable

  if config.data.num_channels != 3:
    raise ValueError(f"Colorization needs a model of colour images (config.data.num_channels=3); "
                     f"this config has {config.data.num_channels} channel(s).")
  exp, step, params, score_of = _controllable_setup(config, workdir)
  files, images = _read_inputs(config, input_path, 3)
  options = config_utils.pc_options(config)

  @jax.jit
  def run(key, data):
    gray = controllable.to_gray(exp.scaler(data))
    x, _ = controllable.colorize(key, score_of(params), exp.sde, gray, **options)
    return jnp.clip(exp.inverse_scaler(x), 0.0, 1.0)

  key = jax.random.fold_in(jax.random.fold_in(exp.sample_key, step), 2)
  results = _in_batches(run, key, images, config.eval.batch_size)
  gray = np.repeat(images.mean(-1, keepdims=True), 3, axis=-1)
  out_dir = os.path.join(workdir, f"colorization_{step}")
  path = _write_results(out_dir, files, [gray, results, images])
  log.info("Colorized %d images into %s", len(files), out_dir)
  return path


# --- the noise-conditional classifier of classifier guidance ---------------------------------

def _classifier_optimizer(config):
  c = config.classifier
  return optim.get_optimizer(lr=c.lr, warmup=c.warmup, grad_clip=1.0)


def _abstract_classifier_state(exp: Experiment):
  optimizer = _classifier_optimizer(exp.config)
  shape = config_utils.image_shape(exp.config, 1)
  init = lambda: classifier_training.init_classifier_state(jax.random.PRNGKey(0),
                                                           exp.classifier_module, optimizer, shape)
  return checkpointing.abstract_like(jax.eval_shape(init))


def load_classifier_params(exp: Experiment, workdir: str):
  """(step, params) of the newest classifier checkpoint in ``workdir/classifier``."""
  ckpts = checkpointing.TrainCheckpoints(os.path.join(workdir, "classifier"), read_only=True)
  state = ckpts.restore_latest(_abstract_classifier_state(exp))
  ckpts.close()
  if state is None:
    raise FileNotFoundError(f"No classifier checkpoint in {workdir}/classifier; train one with "
                            "--mode train_classifier (config.classifier sets its size).")
  return int(state.step), jax.device_put(state.params, exp.replicated)


def _classifier_test_accuracy(exp, loss_fn, params, key, times) -> dict:
  """Test-split accuracy of the classifier at fixed diffusion times (one noise draw per image)."""
  config = exp.config
  correct = {t: 0.0 for t in times}
  count = 0
  with from_config.get_dataset(config, split="test", batch_size=config.eval.batch_size, num_epochs=1,
                               evaluation=True, drop_remainder=False) as it:
    for i, batch in enumerate(it):
      images = jnp.asarray(exp.scaler(batch["image"]))
      labels = check_class_labels(config, batch["label"], config.classifier.num_classes,
                                  "config.classifier.num_classes")
      mask = batch["mask"]
      for t in times:
        _, aux = loss_fn(params, jax.random.fold_in(key, i), images, jnp.asarray(labels),
                         jnp.full((len(labels),), t, images.dtype))
        correct[t] += float(np.asarray(aux["correct"])[mask].sum())
      count += int(mask.sum())
  return {f"accuracy_t{t:g}": correct[t] / count for t in times}


CLASSIFIER_EVAL_TIMES = (0.05, 0.25, 0.5)


def train_classifier(config, workdir: str):
  """Trains the noise-conditional classifier p_t(y | x) into ``workdir/classifier`` (or resumes).

  Minibatches of the training split with their labels; noise levels t ~ U(eps, T) of the config's
  SDE. Logs loss and accuracy, and every classifier.eval_freq steps the test accuracy at t in
  CLASSIFIER_EVAL_TIMES, to TensorBoard and workdir/classifier/accuracy_<step>.json.
  """
  c = config.classifier
  distributed.check_batch_size(c.batch_size)
  exp = Experiment(config)
  out_dir = os.path.join(workdir, "classifier")
  os.makedirs(out_dir, exist_ok=True)
  writer = logging_utils.MetricWriter(os.path.join(out_dir, "tensorboard"))
  ckpts = checkpointing.TrainCheckpoints(out_dir)
  optimizer = _classifier_optimizer(config)
  shape = config_utils.image_shape(config, 1)
  classifier_key, eval_key = jax.random.split(jax.random.fold_in(exp.root_key, 7))
  init = jax.jit(lambda k: classifier_training.init_classifier_state(
      k, exp.classifier_module, optimizer, shape), out_shardings=exp.replicated)
  state = ckpts.restore_latest(_abstract_classifier_state(exp)) or init(classifier_key)
  step = int(state.step)
  classifier_fn = classifier_training.get_classifier_fn(exp.classifier_module)
  eps = config_utils.sampling_eps(config)
  loss_fn = classifier_training.noisy_classifier_loss_fn(exp.sde, classifier_fn, eps)
  eval_loss_fn = jax.jit(functools.partial(classifier_training.noisy_classifier_loss_at, exp.sde,
                                           classifier_fn))
  batch_sharding = distributed.batch_sharding(exp.mesh, 0)
  train_step = jax.jit(classifier_training.make_classifier_step(loss_fn, optimizer),
                       in_shardings=(exp.replicated, batch_sharding, batch_sharding, exp.replicated),
                       out_shardings=(exp.replicated, exp.replicated), donate_argnums=0)
  data = from_config.get_dataset(config, split="train", batch_size=c.batch_size,
                                 shuffle_seed=config.seed + 7, start_step=step)
  bar = logging_utils.ProgressBar(total=c.n_iters, initial=step, desc="classifier")
  report = {}
  try:
    while step < c.n_iters:
      batch = next(data)
      labels = check_class_labels(config, batch["label"], c.num_classes,
                                  "config.classifier.num_classes")
      state, metrics = train_step(state, exp.to_global(exp.scaler(batch["image"])),
                                  exp.to_global(labels), classifier_key)
      step += 1
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise NonFiniteLossError(f"Classifier loss became {loss} at step {step}; lower "
                                 f"config.classifier.lr. Checkpoints in {out_dir} are kept.")
      bar.update(1, loss=loss)
      if step % c.log_freq == 0 or step == c.n_iters:
        writer.scalars(step, {"classifier_loss": loss, "classifier_accuracy": float(metrics["accuracy"])})
      if step % c.eval_freq == 0 or step == c.n_iters:
        report = _classifier_test_accuracy(exp, eval_loss_fn, state.params,
                                           jax.random.fold_in(eval_key, step), CLASSIFIER_EVAL_TIMES)
        writer.scalars(step, report)
        log.info("classifier step %d: %s", step, report)
        if jax.process_index() == 0:
          _atomic_json(os.path.join(out_dir, f"accuracy_{step}.json"), {"step": step, **report})
      if step % c.snapshot_freq == 0 or step == c.n_iters:
        ckpts.save(step, state, snapshot=True)
  finally:
    bar.close()
    ckpts.wait_until_finished()
    ckpts.close()
    writer.close()
    data.close()
  return state, report
