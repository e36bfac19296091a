"""Evaluation of trained checkpoints: test loss, bits/dim (Song et al. 2021, eq. 39 with uniform
dequantization) and sample quality (FID, IS, KID; for the built-in digits the Fréchet Digits
Distance and class accuracy)."""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.experiment import builders, distributed, training
from score_sde.experiment.experiment import Experiment
from score_sde.experiment.fid_reference import InceptionReference, inception_reference
from score_sde.experiment.generate import sample_rounds
from score_sde.experiment.outputs import atomic_json
from score_sde.experiment.restore import guidance_classifier_params, latest_params
from score_sde.io import checkpointing, logging_utils
from score_sde.metrics import evaluate as sample_quality
from score_sde.samplers import likelihood as likelihood_lib

log = logging.getLogger(__name__)


def mean_test_loss(exp: Experiment, params, key) -> float:
  """Mean loss of ``params`` over the test split."""
  eval_step = exp.compiled("eval_step", lambda: jax.jit(training.make_eval_step(exp.eval_loss)))
  total, count = 0.0, 0
  with exp.dataset(split="test", batch_size=exp.eval.batch_size, num_epochs=1, evaluation=True,
                   drop_remainder=False) as it:
    for i, batch in enumerate(it):
      model_batch = jax.tree.map(jnp.asarray, exp.model_batch(batch["image"], batch["label"],
                                                                batch.get("noise")))
      losses = np.asarray(eval_step(params, model_batch, jax.random.fold_in(key, i)))
      total += float(losses[batch["mask"]].sum())
      count += int(batch["mask"].sum())
  return total / count


def _bpd_function(exp: Experiment):
  """``bpd(params, key, images) -> bits/dim [B]``, jitted once per experiment: the parameters are an
  argument, so every checkpoint of an evaluation reuses the compiled solve. The batch is solved
  split over the devices of ``exp.mesh`` (`distributed.split_over_batch`)."""
  ev = exp.eval

  def bpd(params, key, images):
    images = distributed.split_over_batch(images, exp.mesh)
    values = likelihood_lib.bits_per_dim(
        key, exp.unconditional_model(params), exp.sde, images, centered=exp.data.centered,
        dequantize=True, n_repeats=ev.bpd_num_repeats, rtol=ev.bpd_rtol, atol=ev.bpd_atol,
        step_control=ev.bpd_step_control)[0]
    return distributed.gathered(values, exp.mesh)

  return exp.compiled("bits_per_dim", lambda: jax.jit(bpd))


def balanced_batch_size(num_examples: int, batch_size: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` that covers ``num_examples`` in as many batches as
  ``batch_size`` does: the final batch's padding (solved, then masked) shrinks to under ``multiple``
  per batch, e.g. 297 test digits in batches of 99 rather than 128, 128 and 41 padded to 128."""
  num_batches = -(-num_examples // batch_size)
  per_batch = -(-num_examples // num_batches)
  return -(-per_batch // multiple) * multiple


def bits_per_dim(exp: Experiment, params, key) -> float:
  """Bits/dim of eval.bpd_dataset with uniform dequantization, repeated eval.bpd_num_repeats times."""
  ev = exp.eval
  bpd_fn = _bpd_function(exp)
  values = []
  with exp.dataset(split=ev.bpd_dataset, batch_size=ev.batch_size, num_epochs=1, evaluation=True,
                   drop_remainder=False) as it:
    num_examples = it.num_examples
  batch_size = balanced_batch_size(num_examples, ev.batch_size, jax.device_count())
  with exp.dataset(split=ev.bpd_dataset, batch_size=batch_size, num_epochs=1, evaluation=True,
                   drop_remainder=False) as it:
    bar = logging_utils.ProgressBar(total=len(it), desc="bits/dim")
    for i, batch in enumerate(it):
      bpd = np.asarray(bpd_fn(params, jax.random.fold_in(key, i), jnp.asarray(batch["image"])))
      values.append(bpd[batch["mask"]])
      bar.update(1)
    bar.close()
  return float(np.mean(np.concatenate(values)))


def sample_metrics(exp: Experiment, samples: np.ndarray, inception: InceptionReference | None = None,
                   labels: np.ndarray | None = None) -> dict:
  """Sample quality of uint8 samples [N, H, W, C]: FID, IS (and KID, precision/recall when reference
  features exist) if Inception weights are given; for the built-in digits also the offline Fréchet
  Digits Distance to the test split and, for class-guided samples (labels >= 0), the fraction the
  project's digits classifier assigns to the requested class."""
  metrics = {}
  if inception is not None:
    results = sample_quality.evaluate_inception_metrics(
        samples, inception.weights, inception.stats, inception.pool3, seed=exp.seed,
        batch_size=exp.eval.inception_batch_size,
        pr_k=3 if exp.eval.enable_precision_recall else None)
    metrics.update({name: result.as_dict() for name, result in results.items()})
  if exp.data.dataset.lower() == "digits":
    metrics.update(_digits_metrics(exp, samples, labels))
  return metrics


def _digits_metrics(exp: Experiment, samples: np.ndarray, labels: np.ndarray | None) -> dict:
  from score_sde.metrics import digits_classifier as dc

  size = exp.data.image_size
  classifier = dc.train_digits_classifier(seed=0, image_size=size)
  _, (x_test, _) = dc.train_test_split(*dc.load_digits_images(size))
  metrics = {"fdd": dc.frechet_digits_distance(samples, x_test, classifier, seed=exp.seed).as_dict()}
  if labels is not None and np.all(labels >= 0):
    predicted = np.argmax(dc.classify_and_embed(samples, classifier)[0], axis=-1)
    metrics["class_accuracy"] = {"value": float(np.mean(predicted == labels)),
                                 "num_samples": int(len(labels)), "guidance": exp.guidance.kind,
                                 "guidance_scale": exp.guidance.scale}
  return metrics


def evaluate(config, workdir: str, eval_folder: str = "eval", inception_weights=None) -> dict:
  """Evaluates snapshots eval.begin_ckpt..eval.end_ckpt (step = ckpt * snapshot_freq) as they appear.

  Writes ``report_<step>.json`` per checkpoint; ``meta.json`` lists finished ones so a restarted
  evaluation skips them, and sample shards already written are reused. With Inception weights (a
  path, or $SCORE_SDE_INCEPTION_WEIGHTS; see `fid_reference.fid_stats`) the samples also get FID,
  IS and KID against the statistics at `fid_reference.stats_path`, computed there first if missing.
  Returns {step: report} of the checkpoints evaluated by this call.
  """
  exp = builders.build_experiment(config)
  inception = inception_reference(exp, workdir, inception_weights)
  classifier_params = guidance_classifier_params(exp, workdir) if exp.eval.enable_sampling else None
  eval_dir = os.path.join(workdir, eval_folder)
  os.makedirs(eval_dir, exist_ok=True)
  meta_path = os.path.join(eval_dir, "meta.json")
  done = json.load(open(meta_path))["done"] if os.path.exists(meta_path) else []
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  reports = {}
  for ckpt in range(exp.eval.begin_ckpt, exp.eval.end_ckpt + 1):
    step = ckpt * exp.eval.snapshot_freq
    if step in done:
      continue
    if not ckpts.wait_for_snapshot(step, timeout_s=exp.eval.checkpoint_timeout_s):
      log.warning("Snapshot at step %d did not appear in %s; stopping evaluation.", step,
                  ckpts.snapshot_dir)
      break
    params = ckpts.restore_snapshot(step, exp.abstract_state()).ema_params
    report = _checkpoint_report(exp, params, step, ckpt, eval_dir, inception, classifier_params)
    if jax.process_index() == 0:
      atomic_json(os.path.join(eval_dir, f"report_{step}.json"), report)
      done.append(step)
      atomic_json(meta_path, {"done": done})
    log.info("Evaluation of step %d: %s", step, report)
    reports[step] = report
  ckpts.close()
  return reports


def _checkpoint_report(exp: Experiment, params, step: int, ckpt: int, eval_dir: str,
                       inception: InceptionReference | None, classifier_params) -> dict:
  """The enabled evaluations of one checkpoint's EMA params."""
  key = jax.random.fold_in(exp.eval_key, step)
  report = {"step": step, "checkpoint": ckpt}
  if exp.eval.enable_loss:
    report["eval_loss"] = mean_test_loss(exp, params, jax.random.fold_in(key, 0))
  if exp.eval.enable_bpd:
    report["bpd"] = bits_per_dim(exp, params, jax.random.fold_in(key, 1))
  if exp.eval.enable_sampling:
    out_dir = os.path.join(eval_dir, f"ckpt_{ckpt}")
    os.makedirs(out_dir, exist_ok=True)
    samples, labels = sample_rounds(exp, params, jax.random.fold_in(key, 2), out_dir,
                                    classifier_params)
    if jax.process_index() == 0:
      logging_utils.save_image_grid(samples[:64].astype(np.float32) / 255.0,
                                    os.path.join(out_dir, "samples.png"))
    report.update(sample_metrics(exp, samples, inception, labels))
    if exp.controlnet is not None:
      report["adherence"] = control_adherence(exp, samples)
  return report


def control_adherence(exp: Experiment, samples: np.ndarray) -> dict:
  """Mean correlation between the controls of uint8 samples [N, H, W, C] and the controls they were
  sampled under (those of the test images, cycling, as `Experiment.generate` draws them)."""
  from score_sde.experiment import controlnet  # pylint: disable=import-outside-toplevel

  images = samples.astype(np.float32) / 255.0
  controls = np.asarray(exp.controlnet.control(exp.test_images(0, len(samples))))
  scores = controlnet.adherence(images, controls, exp.controlnet)
  return {"value": float(scores.mean()), "num_samples": int(len(samples)),
          "control_type": exp.controlnet.control_type}


def likelihood(config, workdir: str) -> float:
  """Bits/dim of the newest checkpoint on the test split; written to workdir/likelihood_<step>.json."""
  exp = builders.build_experiment(config)
  exp.require_pixel_space("--mode likelihood (bits/dim of the data)")
  if exp.super_resolution is not None or exp.controlnet is not None:
    raise ValueError("--mode likelihood is not available for a super-resolution or ControlNet "
                     "model: its bits/dim would be conditional on the input image.")
  step, params = latest_params(exp, workdir)
  bpd = bits_per_dim(exp, params, jax.random.fold_in(exp.eval_key, step))
  atomic_json(os.path.join(workdir, f"likelihood_{step}.json"), {"step": step, "bpd": bpd})
  log.info("bits/dim at step %d: %.4f", step, bpd)
  return bpd
