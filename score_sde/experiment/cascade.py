"""Cascaded generation (Ho et al. 2022): a base model's samples upsampled by one or more
super-resolution stages (``--mode sample`` of a config with config.cascade), and ``--mode upsample
--input FOLDER``, one super-resolution stage applied to given images.

Each stage is a run of its own (a config file and a work directory, newest EMA parameters) with its
own sampler; stage i + 1 takes stage i's samples, mapped from its data space to the next stage's
(``inverse_scaler`` then ``scaler``), as the low-resolution input. Rounds of eval.batch_size
samples; every stage's grid and samples are written.
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.experiment import builders, config_files
from score_sde.experiment.controllable_io import _in_batches, _read_inputs, _write_results
from score_sde.experiment.evaluation import sample_metrics
from score_sde.experiment.outputs import atomic_json, atomic_npz
from score_sde.experiment.restore import latest_params
from score_sde.io import logging_utils

log = logging.getLogger(__name__)


def is_cascade(config) -> bool:
  return bool(config.get("cascade", {}).get("base_workdir"))


def _stages(config) -> list[tuple[str, str]]:
  c = config.cascade
  configs, workdirs = tuple(c.stage_configs), tuple(c.stage_workdirs)
  if not configs or len(configs) != len(workdirs):
    raise ValueError(f"config.cascade needs one or more super-resolution stages with a work "
                     f"directory each: stage_configs={configs}, stage_workdirs={workdirs}.")
  return [(c.base_config, c.base_workdir), *zip(configs, workdirs)]


def sample_cascade(config, workdir: str) -> str:
  """Writes config.eval.num_samples cascade samples to workdir/cascade/stage_<i>.png (and .npz)
  for the base (i = 0) and every stage, and the digits metrics of the last stage's samples to
  workdir/cascade/report.json. Returns the last stage's grid."""
  n, b = config.eval.num_samples, config.eval.batch_size
  out_dir = os.path.join(workdir, "cascade")
  os.makedirs(out_dir, exist_ok=True)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 101)
  previous, images, report = None, None, {}
  for i, (config_file, stage_workdir) in enumerate(_stages(config)):
    field = "config.cascade.base_config" if i == 0 else f"config.cascade.stage_configs[{i - 1}]"
    exp = builders.build_experiment(config_files.load_config_file(config_file, field))
    if i and exp.super_resolution is None:
      raise ValueError(f"{field}={config_file!r} is not a super-resolution model "
                       "(config.super_resolution.factor > 1).")
    if i and previous.data.image_size * exp.super_resolution.factor != exp.data.image_size:
      raise ValueError(f"{field}={config_file!r} upsamples {exp.data.image_size // exp.super_resolution.factor}"
                       f"px images, but the stage before it makes {previous.data.image_size}px ones.")
    step, params = latest_params(exp, stage_workdir)
    outputs = []
    for r in range(-(-n // b)):
      low_res = None
      if i:
        chunk = images[r * b:(r + 1) * b]
        chunk = np.concatenate([chunk, np.zeros((b - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        low_res = exp.scaler(chunk)
      x, _ = exp.generate(jax.random.fold_in(jax.random.fold_in(key, i), r), params, b,
                          offset=r * b, low_res=low_res)
      outputs.append(np.clip(np.asarray(exp.inverse_scaler(x)), 0.0, 1.0))
    images = np.concatenate(outputs)[:n]
    uint8 = np.round(images * 255).astype(np.uint8)
    if jax.process_index() == 0:
      atomic_npz(os.path.join(out_dir, f"stage_{i}.npz"), samples=uint8)
      logging_utils.save_image_grid(images[:64], os.path.join(out_dir, f"stage_{i}.png"))
    report[f"stage_{i}"] = {"config": config_file, "workdir": stage_workdir, "step": step,
                            "image_size": exp.data.image_size}
    log.info("cascade stage %d (%s, step %d): %d samples at %dpx", i, config_file, step, n,
             exp.data.image_size)
    previous = exp
  report.update(sample_metrics(previous, uint8))
  if jax.process_index() == 0:
    atomic_json(os.path.join(out_dir, "report.json"), report)
  log.info("cascade report: %s", report)
  return os.path.join(out_dir, f"stage_{len(_stages(config)) - 1}.png")


def upsample(config, workdir: str, input_path: str) -> str:
  """Upsamples the images under ``input_path`` (read at the stage's low resolution) with the newest
  checkpoint of the super-resolution model in ``workdir``; writes workdir/upsampled_<step>/
  <file>.png and grid.png (rows: the input enlarged by pixel repetition, the result, the input
  again)."""
  exp = builders.build_experiment(config)
  sr = exp.super_resolution
  if sr is None:
    raise ValueError("--mode upsample needs a super-resolution config "
                     "(config.super_resolution.factor > 1), e.g. configs/digits/sr_8_to_16.py.")
  step, params = latest_params(exp, workdir)
  low_size = exp.data.image_size // sr.factor
  files, images = _read_inputs(input_path, low_size, exp.data.num_channels)
  batch = exp.eval.batch_size

  def run(key, low):
    x, _ = exp.generate(key, params, batch, low_res=exp.scaler(low))
    return jnp.clip(exp.inverse_scaler(x), 0.0, 1.0)

  key = jax.random.fold_in(jax.random.fold_in(exp.sample_key, step), 3)
  results = _in_batches(run, key, images, batch)
  enlarged = np.repeat(np.repeat(images, sr.factor, axis=1), sr.factor, axis=2)
  out_dir = os.path.join(workdir, f"upsampled_{step}")
  path = _write_results(out_dir, files, [enlarged, results, enlarged])
  log.info("Upsampled %d images from %dpx to %dpx into %s", len(files), low_size,
           exp.data.image_size, out_dir)
  return path
