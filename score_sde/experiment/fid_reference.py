"""Inception reference statistics of a config's data, for FID (Heusel et al. 2017), KID and IS."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Iterator

import jax
import numpy as np

from score_sde.experiment import builders
from score_sde.experiment.experiment import Experiment
from score_sde.experiment.outputs import atomic_json
from score_sde.io import logging_utils
from score_sde.metrics import convert_inception, fid
from score_sde.metrics import features as inception_features

log = logging.getLogger(__name__)


def stats_path(exp: Experiment, workdir: str) -> str:
  """config.eval.fid_stats_path, else <workdir>/fid_stats/<dataset>_<split>_<size>[_n<cap>].npz."""
  ref = exp.reference
  if ref.path:
    return ref.path
  name = f"{exp.data.tag}_{ref.split}_{exp.data.image_size}"
  return os.path.join(workdir, "fid_stats", name + (f"_n{ref.num_images}" if ref.num_images else "")
                      + ".npz")


def _pool3_path(path: str) -> str:
  return os.path.splitext(path)[0] + "_pool3.npy"


def _description_path(path: str) -> str:
  return os.path.splitext(path)[0] + ".json"


def _description(exp: Experiment) -> dict:
  """What a statistics file must have been computed from to serve as this config's reference."""
  return {"dataset": exp.data.tag, "split": exp.reference.split, "image_size": exp.data.image_size,
          "num_channels": exp.data.num_channels, "max_images": exp.reference.num_images}


def _check_options(exp: Experiment) -> None:
  ref = exp.reference
  if ref.split not in ("train", "test"):
    raise ValueError(f"config.eval.fid_stats_split={ref.split!r}; choose 'train' or 'test'.")
  if ref.num_images < 0:
    raise ValueError(f"config.eval.fid_stats_num_images={ref.num_images}; use >= 0 (0: all).")
  if ref.batch_size <= 0:
    raise ValueError(f"config.eval.inception_batch_size={ref.batch_size}; use a positive size.")


def _reference_images(exp: Experiment) -> Iterator[np.ndarray]:
  """Batches [b, H, W, C] in [0, 1] of the reference split, in dataset order, capped at
  eval.fid_stats_num_images (0: all); no flips, no dequantization noise."""
  cap, b = exp.reference.num_images, exp.reference.batch_size
  with exp.dataset(split=exp.reference.split, batch_size=b, process_index=0, process_count=1,
                   num_epochs=1, evaluation=True, uniform_dequantization=False,
                   drop_remainder=False) as it:
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


def compute_reference(exp: Experiment, weights) -> tuple[fid.FeatureStats, np.ndarray]:
  """Statistics and pool_3 features [N, 2048] of the reference images."""
  return inception_features.compute_dataset_stats_and_pool3(_reference_images(exp), weights,
                                                            exp.reference.batch_size)


def _save(exp: Experiment, path: str, stats: fid.FeatureStats, pool3: np.ndarray, weights) -> None:
  """Writes the pool_3 features and a JSON description, then the .npz, whose presence marks completion."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(_pool3_path(path) + ".tmp", "wb") as f:
    np.save(f, pool3)
  os.replace(_pool3_path(path) + ".tmp", _pool3_path(path))
  atomic_json(_description_path(path), {
      **_description(exp), "num_images": stats.num_images,
      **inception_features.stats_provenance(weights), "weights_file": weights.source,
      "pool3_file": os.path.basename(_pool3_path(path))})
  stats.save(path + ".tmp")
  os.replace(path + ".tmp", path)


def _load(exp: Experiment, path: str, weights) -> tuple[fid.FeatureStats, np.ndarray | None]:
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
    differ = {k: (recorded.get(k), v) for k, v in _description(exp).items() if recorded.get(k) != v}
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
  code path as samples (`metrics.features`), and writes `stats_path(exp, workdir)` (mu, sigma,
  num_images, feature space, resize mode, weights hash), `<stem>_pool3.npy` (float32 [N, 2048]) and
  `<stem>.json` (which data and weights). Every process computes the same numbers; process 0 writes.

  Args:
    inception_weights: path of pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (None: read
      $SCORE_SDE_INCEPTION_WEIGHTS), checked against its published SHA-256; or loaded `InceptionWeights`.
  Returns:
    The path of the statistics file.
  """
  exp = builders.build_experiment(config)
  _check_options(exp)
  weights = _inception_weights(inception_weights)
  path = stats_path(exp, workdir)
  stats, pool3 = compute_reference(exp, weights)
  if jax.process_index() == 0:
    _save(exp, path, stats, pool3, weights)
  log.info("Inception statistics of %d %s images written to %s", stats.num_images, exp.data.tag, path)
  return path


@dataclasses.dataclass(frozen=True)
class InceptionReference:
  weights: convert_inception.InceptionWeights
  stats: fid.FeatureStats
  pool3: np.ndarray | None  # [N, 2048] reference features (KID, precision/recall), when stored


def inception_reference(exp: Experiment, workdir: str, inception_weights) -> InceptionReference | None:
  """Weights and reference statistics for FID/KID/IS, prepared before any sampling so a bad file fails
  in seconds; None (logged) when no weights are given. Missing statistics are computed and cached."""
  if not exp.eval.enable_sampling:
    if inception_weights is not None:
      log.warning("Inception weights given, but config.eval.enable_sampling is False: no FID/KID/IS.")
    return None
  if inception_weights is None and not os.environ.get(convert_inception.INCEPTION_WEIGHTS_ENV):
    log.info("FID/KID/IS skipped: no Inception weights. To enable them, download %s (%s) and pass "
             "%s=PATH or set $%s.", convert_inception.INCEPTION_WEIGHTS_FILENAME,
             convert_inception.INCEPTION_WEIGHTS_URL, convert_inception.INCEPTION_WEIGHTS_FLAG,
             convert_inception.INCEPTION_WEIGHTS_ENV)
    return None
  _check_options(exp)
  weights = _inception_weights(inception_weights)
  path = stats_path(exp, workdir)
  if os.path.exists(path):
    stats, pool3 = _load(exp, path, weights)
  else:
    log.info("No Inception statistics at %s: computing them once from the %r split.", path,
             exp.reference.split)
    stats, pool3 = compute_reference(exp, weights)
    if jax.process_index() == 0:
      _save(exp, path, stats, pool3, weights)
  if pool3 is None:
    log.info("KID skipped: no reference pool_3 features %s next to %s (--mode fid_stats writes them).",
             _pool3_path(path), path)
  return InceptionReference(weights, stats, pool3)
