"""Sampling runs of a trained checkpoint: rounds of samples written as resumable shards."""
from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np

from score_sde.experiment import builders
from score_sde.experiment.experiment import Experiment
from score_sde.experiment.outputs import atomic_json, atomic_npz
from score_sde.experiment.restore import guidance_classifier_params, latest_params
from score_sde.io import datasets, logging_utils

log = logging.getLogger(__name__)


def sample_rounds(exp: Experiment, params, key, out_dir: str,
                  classifier_params=None) -> tuple[np.ndarray, np.ndarray]:
  """eval.num_samples samples in rounds of eval.batch_size, one .npz shard per round.

  Returns uint8 samples [n, H, W, C] and their class labels [n] (-1 when unguided). A shard already
  on disk is kept, so an interrupted run resumes where it stopped; ``out_dir/sampling.json`` records
  what made the shards (`sampling_spec`), and shards of another sampler, seed or batch size are
  refused rather than reused.
  """
  n, b = exp.eval.num_samples, exp.eval.batch_size
  claim_shard_dir(out_dir, sampling_spec(exp))
  shards, shard_labels = [], []
  bar = logging_utils.ProgressBar(total=-(-n // b), desc="sampling")
  for r in range(-(-n // b)):
    path = os.path.join(out_dir, f"samples_{r}.npz")
    if not os.path.exists(path):
      x, labels = exp.generate(jax.random.fold_in(key, r), params, b, offset=r * b,
                               classifier_params=classifier_params)
      images = np.clip(np.asarray(exp.inverse_scaler(x)), 0.0, 1.0)
      labels = np.full((b,), datasets.NO_LABEL, np.int32) if labels is None else labels
      atomic_npz(path, samples=np.round(images * 255).astype(np.uint8), labels=labels)
    with np.load(path) as shard:
      shards.append(shard["samples"])
      shard_labels.append(shard["labels"])
    bar.update(1)
  bar.close()
  return np.concatenate(shards)[:n], np.concatenate(shard_labels)[:n]


def sampling_spec(exp: Experiment) -> dict:
  """Everything a shard's samples depend on besides the checkpoint and the round's key."""
  return {**exp.sampler_spec, "batch_size": exp.eval.batch_size}


def claim_shard_dir(out_dir: str, spec: dict, prefixes: tuple[str, ...] = ("samples_",),
                    spec_name: str = "sampling.json") -> None:
  """Records ``spec`` in ``out_dir/<spec_name>``, or checks that the shards there (files starting
  with one of ``prefixes``) match it."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, spec_name)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored != json.loads(json.dumps(spec)):
      changed = sorted(k for k in set(stored) | set(spec) if stored.get(k) != spec.get(k))
      raise ValueError(f"{out_dir} holds samples made with other settings ({', '.join(changed)}: "
                       f"{ {k: stored.get(k) for k in changed} }); move it away, or choose another "
                       "output folder (e.g. --eval_folder), to sample with the new settings.")
  elif any(f.startswith(prefixes) for f in os.listdir(out_dir)):
    raise ValueError(f"{out_dir} holds shards of unknown settings (no {spec_name}); move them away "
                     "to write them again.")
  else:
    atomic_json(path, spec)


def sample(config, workdir: str, control: str | None = None) -> str:
  """Writes eval.num_samples samples of the newest checkpoint to
  workdir/samples/final_<step>_<method>_<digest>, a folder per sampling setting
  (`sampling_spec`, stored in its sampling.json).

  Class-guided when ``config.sampling.guidance`` is 'cfg' or 'classifier' (labels cycle through the
  classes unless ``sampling.class_label`` picks one; each shard stores its 'labels'). A config with
  config.cascade samples the cascade instead (`cascade.sample_cascade`). A ControlNet config with
  ``control``, a folder of control images, samples under them (`controlnet.sample_under_control`).
  """
  from score_sde.experiment import cascade, controlnet  # pylint: disable=import-outside-toplevel

  if control:
    return controlnet.sample_under_control(config, workdir, control)
  if cascade.is_cascade(config):
    return cascade.sample_cascade(config, workdir)
  exp = builders.build_experiment(config)
  step, params = latest_params(exp, workdir)
  classifier_params = guidance_classifier_params(exp, workdir)
  spec = sampling_spec(exp)
  digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
  out_dir = os.path.join(workdir, "samples", f"final_{step}_{spec['method']}_{digest}")
  samples, _ = sample_rounds(exp, params, jax.random.fold_in(exp.sample_key, step), out_dir,
                             classifier_params)
  path = os.path.join(out_dir, "samples.png")
  logging_utils.save_image_grid(samples[:64].astype(np.float32) / 255.0, path)
  log.info("Wrote %d samples and %s", len(samples), path)
  return path
