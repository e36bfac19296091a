"""Files a run writes: JSON reports and sample shards (atomically, so a reader never sees half a file)
and sample grids."""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from score_sde.io import logging_utils


def atomic_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def atomic_npz(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def write_sample_grid(images, step: int, workdir: str, writer) -> None:
  """Images [N, H, W, C] in data space (clipped to [0, 1]) as workdir/samples/iter_<step>.png and
  to TensorBoard, from process 0."""
  images = np.clip(np.asarray(images), 0.0, 1.0)
  if jax.process_index() == 0:
    path = os.path.join(workdir, "samples", f"iter_{step}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    logging_utils.save_image_grid(images, path)
    writer.image_grid(step, "samples", images)
