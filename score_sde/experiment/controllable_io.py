"""Inpainting and colorization (Song et al. 2021, Appendix I) of image files with a trained checkpoint:
masks, reading inputs, writing results."""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from score_sde.experiment import builders
from score_sde.experiment.restore import latest_params
from score_sde.io import datasets, logging_utils
from score_sde.samplers import controllable

log = logging.getLogger(__name__)


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


def _read_inputs(input_path: str, image_size: int, num_channels: int) -> tuple[list[str], np.ndarray]:
  """The images under ``input_path``, centrally cropped and resized: (files, [n, S, S, C] in [0, 1])."""
  try:
    files = datasets.list_image_files(input_path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--input {input_path!r}: {e}") from None
  images = [datasets.crop_resize(datasets.read_image(f, num_channels), image_size) for f in files]
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


def inpaint(config, workdir: str, input_path: str, mask: str) -> str:
  """Inpaints every image under ``input_path`` with the newest checkpoint (PC with replacement).

  Writes workdir/inpainting/<mask name>_<step>/<file>.png and grid.png (rows: masked input,
  result, input). Sampler options come from config.sampling (PC fields).
  """
  exp = builders.build_experiment(config)
  exp.require_pixel_space("--mode inpaint")
  step, params = latest_params(exp, workdir)
  files, images = _read_inputs(input_path, exp.data.image_size, exp.data.num_channels)
  keep = load_mask(mask, exp.data.image_size)

  @jax.jit
  def run(key, data):
    x, _ = controllable.inpaint(key, exp.unconditional_model(params), exp.sde, exp.scaler(data), keep,
                                **exp.pc_options)
    return jnp.clip(exp.inverse_scaler(x), 0.0, 1.0)

  key = jax.random.fold_in(jax.random.fold_in(exp.sample_key, step), 1)
  results = _in_batches(run, key, images, exp.eval.batch_size)
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
  exp = builders.build_experiment(config)
  exp.require_pixel_space("--mode colorize")
  if exp.data.num_channels != 3:
    raise ValueError(f"Colorization needs a model of colour images (config.data.num_channels=3); "
                     f"this config has {exp.data.num_channels} channel(s).")
  step, params = latest_params(exp, workdir)
  files, images = _read_inputs(input_path, exp.data.image_size, 3)

  @jax.jit
  def run(key, data):
    gray = controllable.to_gray(exp.scaler(data))
    x, _ = controllable.colorize(key, exp.unconditional_model(params), exp.sde, gray, **exp.pc_options)
    return jnp.clip(exp.inverse_scaler(x), 0.0, 1.0)

  key = jax.random.fold_in(jax.random.fold_in(exp.sample_key, step), 2)
  results = _in_batches(run, key, images, exp.eval.batch_size)
  gray = np.repeat(images.mean(-1, keepdims=True), 3, axis=-1)
  out_dir = os.path.join(workdir, f"colorization_{step}")
  path = _write_results(out_dir, files, [gray, results, images])
  log.info("Colorized %d images into %s", len(files), out_dir)
  return path
