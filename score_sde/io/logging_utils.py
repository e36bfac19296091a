"""Training-loop logging without TensorFlow: TensorBoard event files, PNG image grids, progress bars.

TensorBoard files are written with tensorboardX and read back by `read_events`, which parses the
TFRecord framing (length, masked CRC-32C, Event protobuf, masked CRC-32C) itself, so neither
TensorFlow nor TensorBoard is needed to write or to check them. In a multi-host run only process 0
writes; the other processes get writers and progress bars that do nothing.
"""
from __future__ import annotations

import glob
import math
import os
import struct
import sys
from typing import Iterator, Mapping

import numpy as np
from PIL import Image


def _default_process_index() -> int:
  import jax

  return jax.process_index()


# ----------------------------------------------------------------------------------------------
# Image grids.


def make_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2,
              pad_value: float = 0.0) -> np.ndarray:
  """Tiles images [N, H, W, C] into one image [rows (H + p) + p, nrow (W + p) + p, C].

  `nrow` images per row (default ceil(sqrt(N))), `padding` pixels of `pad_value` between and
  around them, as torchvision's `make_grid`.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Expected images [N, H, W, C] with C = 1 or 3, got shape {images.shape}.")
  count, height, width, channels = images.shape
  if count == 0:
    raise ValueError("Cannot make a grid of zero images.")
  nrow = math.ceil(math.sqrt(count)) if nrow is None else nrow
  if nrow < 1:
    raise ValueError(f"nrow must be a positive integer, got {nrow}.")
  columns = min(nrow, count)
  rows = math.ceil(count / columns)
  cell_h, cell_w = height + padding, width + padding
  grid = np.full((rows * cell_h + padding, columns * cell_w + padding, channels), pad_value,
                 dtype=images.dtype)
  for i, image in enumerate(images):
    top, left = (i // columns) * cell_h + padding, (i % columns) * cell_w + padding
    grid[top:top + height, left:left + width] = image
  return grid  # [rows * (H + p) + p, columns * (W + p) + p, C]


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[0, 1] floats to uint8 as torchvision's save_image: clip(x * 255 + 0.5, 0, 255); NaN -> 0."""
  images = np.nan_to_num(np.asarray(images, dtype=np.float32), nan=0.0)
  return np.clip(images * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def save_image_grid(images: np.ndarray, path: str, nrow: int | None = None,
                    padding: int = 2, pad_value: float = 0.0) -> np.ndarray:
  """Writes images [N, H, W, C] with values in [0, 1] to `path` as one PNG grid.

  Returns the uint8 grid that was written. Grey images (C = 1) are saved as 8-bit greyscale.
  """
  grid = to_uint8(make_grid(images, nrow, padding, pad_value))
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path, format="PNG")
  return grid


# ----------------------------------------------------------------------------------------------
# TensorBoard.


class MetricWriter:
  """TensorBoard scalars and image grids, written by process 0 only.

  Usage: `writer.scalars(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": g})`,
  `writer.image_grid(step, "samples", images)`. Values may be Python, NumPy or JAX scalars.
  """

  def __init__(self, logdir: str, *, process_index: int | None = None, flush_secs: int = 30):
    process_index = _default_process_index() if process_index is None else process_index
    self.enabled = process_index == 0
    self.logdir = logdir
    self._writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      self._writer = SummaryWriter(logdir, flush_secs=flush_secs)

  def scalars(self, step: int, metrics: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for tag, value in metrics.items():
      self._writer.add_scalar(tag, float(np.asarray(value)), global_step=int(step))

  def image_grid(self, step: int, tag: str, images: np.ndarray, nrow: int | None = None) -> None:
    """Logs images [N, H, W, C] in [0, 1] as one grid image (same pixels as save_image_grid)."""
    if self._writer is None:
      return
    grid = to_uint8(make_grid(np.asarray(images), nrow))
    self._writer.add_image(tag, grid, global_step=int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def read_events(path: str) -> Iterator:
  """Yields the Event protos of one TensorBoard event file, checking every CRC."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c

  with open(path, "rb") as file:
    data = file.read()
  offset = 0
  while offset < len(data):
    if offset + 12 > len(data):
      raise ValueError(f"Truncated record header at byte {offset} of {path!r}.")
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
    body = data[offset + 12:offset + 12 + length]
    footer = data[offset + 12 + length:offset + 16 + length]
    if header_crc != masked_crc32c(header) or len(body) != length or len(footer) != 4:
      raise ValueError(f"Corrupt or truncated record at byte {offset} of {path!r}.")
    if struct.unpack("<I", footer)[0] != masked_crc32c(body):
      raise ValueError(f"Record checksum mismatch at byte {offset} of {path!r}.")
    event = event_pb2.Event()
    event.ParseFromString(body)
    yield event
    offset += 16 + length


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from every event file in `logdir`, in file order."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for event in read_events(path):
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


# ----------------------------------------------------------------------------------------------
# Progress bars.


class ProgressBar:
  """A tqdm bar with rate and ETA, plus examples/s and the latest metrics as its postfix.

  Shown only on process 0 and, unless `enabled` says otherwise, only when stderr is a
  terminal; otherwise every method does nothing.
  """

  def __init__(self, total: int | None, *, desc: str = "", initial: int = 0,
               unit: str = "step", examples_per_step: int | None = None,
               process_index: int | None = None, enabled: bool | None = None):
    process_index = _default_process_index() if process_index is None else process_index
    if enabled is None:
      enabled = sys.stderr.isatty()
    self.enabled = bool(enabled) and process_index == 0
    self.examples_per_step = examples_per_step
    self._bar = None
    if self.enabled:
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                       dynamic_ncols=True, smoothing=0.1)

  def update(self, n: int = 1, **metrics: float) -> None:
    """Advances by `n` steps and shows `metrics` (e.g. loss=...) next to the rate."""
    if self._bar is None:
      return
    self._bar.update(n)
    postfix = {name: f"{float(np.asarray(value)):.4g}" for name, value in metrics.items()}
    stats = self._bar.format_dict
    rate = stats["rate"] or (
        (stats["n"] - stats["initial"]) / stats["elapsed"] if stats["elapsed"] > 0 else None)
    if self.examples_per_step and rate:
      postfix["ex/s"] = f"{rate * self.examples_per_step:.4g}"
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
