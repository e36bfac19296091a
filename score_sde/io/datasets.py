"""Host-side image input pipelines for a JAX training loop, without TensorFlow.

Reproduces the preprocessing of the reference implementation of "Score-Based Generative Modeling
through Stochastic Differential Equations" (Song et al., ICLR 2021): central crop and resize,
random horizontal flip, uniform dequantization (u + 255 x) / 256, and images in [0, 1] that
`get_data_scaler(centered=True)` maps to [-1, 1].

Sources (`DataSpec.dataset`, case-insensitive):
  CIFAR10, SVHN, CELEBA, LSUN  tfds datasets read by random access with `tfds.data_source`
                               (array_record files; prepare them once with `tfds build`).
  TFDS                         any tfds dataset with an 'image' feature (`DataSpec.tfds_name`).
  folder                       PNG/JPEG files found recursively under `DataSpec.path`.
  digits                       scikit-learn's 1797 handwritten 8x8 digits; ships with
                               scikit-learn, so it works offline with no download.
  pairs                        (noise, data) couplings under `DataSpec.path`, written by
                               `--mode reflow_pairs` (`write_pairs`): batches also hold 'noise'.

Ordering. Examples form one global stream: epoch e is a permutation of the split drawn from
(seed, e), epochs are concatenated, and global batch s is stream positions [s B, (s + 1) B).
Process p of P takes positions [s B + p B/P, s B + (p + 1) B/P) of that batch, so the process
count never changes which examples form a global batch, and the random flip and dequantization
noise of an example are drawn from (seed, position). Batch s is therefore a pure function of
(seed, s), which is what makes an exact resume from `start_step` possible.

Batching. A `grain.MapDataset` over global batch indices maps s to this process's slice of batch
s; grain threads (and optionally worker processes) decode ahead. `BatchIterator`, a grain
`DatasetIterator`, has a `get_state` that training checkpoints save, so a resume is exact.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Callable

import grain
import numpy as np
from absl import flags
from PIL import Image

# index -> (image [H, W, C] float32 in [0, 1], label), or (image, label, noise [H, W, C]) for pairs
LoadFn = Callable[[int], tuple]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NO_LABEL = -1  # label of examples from sources without labels
DIGITS_NUM_TEST = 297  # 1797 digits = 1500 train + 297 test

# tfds name and (train, test) split names of each reference dataset, as in the reference code.
_TFDS_DATASETS = {
    "CIFAR10": ("cifar10", "train", "test"),
    "SVHN": ("svhn_cropped", "train", "test"),
    "CELEBA": ("celeb_a", "train", "validation"),
    "LSUN": ("lsun/{category}", "train", "validation"),
    "TFDS": ("{tfds_name}", "train", "test"),
}
DATASETS = (*_TFDS_DATASETS, "digits", "folder", "pairs")
PAIRS_GLOB = ("noise_", "data_")  # file-name prefixes of the shards of a pairs folder


# ----------------------------------------------------------------------------------------------
# Scaling between data space [0, 1] and model space.


def get_data_scaler(centered: bool) -> Callable[[Any], Any]:
  """Maps images in [0, 1] to model space: [-1, 1] when `centered`, else unchanged."""
  if centered:
    return lambda x: x * 2.0 - 1.0
  return lambda x: x


def get_data_inverse_scaler(centered: bool) -> Callable[[Any], Any]:
  """Inverse of `get_data_scaler`: maps model space back to [0, 1]."""
  if centered:
    return lambda x: (x + 1.0) / 2.0
  return lambda x: x


# ----------------------------------------------------------------------------------------------
# Crop and resize (Pillow resampling filters are antialiased when downscaling, like
# `tf.image.resize(..., antialias=True)` in the reference).

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST}


def resize(image: np.ndarray, height: int, width: int, method: str = "bilinear") -> np.ndarray:
  """Resizes a float image [H, W, C] to [height, width, C], channel by channel in float32."""
  if image.shape[:2] == (height, width):
    return image.astype(np.float32, copy=False)
  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
          (width, height), resample=_RESAMPLE[method]))
      for c in range(image.shape[-1])
  ]
  return np.stack(channels, axis=-1)  # [height, width, C]


def central_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central size x size window of an image [H, W, C]."""
  height, width = image.shape[:2]
  if size > min(height, width):
    raise ValueError(f"Cannot crop {size}x{size} from an image of size {height}x{width}.")
  top, left = (height - size) // 2, (width - size) // 2
  return image[top:top + size, left:left + size]


def resize_small(image: np.ndarray, resolution: int) -> np.ndarray:
  """Bilinear resize so that the shorter side becomes `resolution`, keeping the aspect ratio."""
  height, width = image.shape[:2]
  ratio = resolution / min(height, width)
  return resize(image, int(round(height * ratio)), int(round(width * ratio)))


def crop_resize(image: np.ndarray, resolution: int) -> np.ndarray:
  """Central square crop of the shorter side, bicubic resize, then rounding to the 8-bit grid.

  The reference does the same for LSUN but truncates to uint8; rounding avoids its -0.5/255
  bias. Staying on the 8-bit grid keeps uniform dequantization exact.
  """
  image = central_crop(image, min(image.shape[:2]))
  image = resize(image, resolution, resolution, method="bicubic")
  return np.clip(np.round(image * 255.0), 0.0, 255.0).astype(np.float32) / 255.0


def _resize_op(dataset: str, image_size: int) -> Callable[[np.ndarray], np.ndarray]:
  """The reference's per-dataset `resize_op`, on float images [H, W, C] in [0, 1]."""
  if dataset in ("CIFAR10", "SVHN"):
    return lambda x: resize(x, image_size, image_size)
  if dataset == "CELEBA":
    return lambda x: resize_small(central_crop(x, 140), image_size)
  if dataset == "LSUN" and image_size == 128:
    return lambda x: central_crop(resize_small(x, image_size), image_size)
  return lambda x: crop_resize(x, image_size)


# ----------------------------------------------------------------------------------------------
# Sources: each gives (number of examples, index -> (image [H, W, C] float32 in [0, 1], label)).


@functools.lru_cache(maxsize=4)
def _digits_arrays(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits resized to image_size (uint8 [N, S, S, 1]) and their labels (int32 [N])."""
  from sklearn.datasets import load_digits  # ships its data; no download

  digits = load_digits()
  images = digits.images.astype(np.float32) / 16.0  # [N, 8, 8], grey levels 0..16
  resized = np.stack([resize(x[..., None], image_size, image_size, "bicubic") for x in images])
  images_u8 = np.clip(np.round(resized * 255.0), 0, 255).astype(np.uint8)  # [N, S, S, 1]
  return images_u8, digits.target.astype(np.int32)


def digits_split(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic train (1500) / test (297) split of the digits: uint8 images and labels."""
  images, labels = _digits_arrays(image_size)
  order = np.random.default_rng(0).permutation(len(images))
  chosen = order[:-DIGITS_NUM_TEST] if split == "train" else order[-DIGITS_NUM_TEST:]
  return images[chosen], labels[chosen]


def array_source(images: np.ndarray, labels: np.ndarray | None = None) -> tuple[int, LoadFn]:
  """A source over in-memory uint8 images [N, H, W, C] and optional labels [N]."""
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"Expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}.")

  def load(index: int) -> tuple[np.ndarray, int]:
    label = NO_LABEL if labels is None else int(labels[index])
    return images[index].astype(np.float32) / 255.0, label

  return len(images), load


def write_pairs(path: str, index: int, noise: np.ndarray, data: np.ndarray) -> None:
  """Writes shard ``index`` of a pairs folder: noise [n, H, W, C] (the ODE's start) and data
  [n, H, W, C] in [0, 1] (its end), each as .npy written to a temporary name, then renamed."""
  if noise.shape != data.shape:
    raise ValueError(f"noise {noise.shape} and data {data.shape} of a pair shard must match.")
  os.makedirs(path, exist_ok=True)
  for prefix, array in zip(PAIRS_GLOB, (noise, data)):
    final = os.path.join(path, f"{prefix}{index:05d}.npy")
    with open(final + ".tmp", "wb") as f:
      np.save(f, np.asarray(array, np.float32))
    os.replace(final + ".tmp", final)


def pair_shards(path: str) -> list[int]:
  """Indices of the complete shards (noise and data both written) of a pairs folder."""
  if not os.path.isdir(path):
    return []
  names = set(os.listdir(path))
  return sorted(int(n[len("noise_"):-len(".npy")]) for n in names
                if n.startswith("noise_") and n.endswith(".npy")
                and n.replace("noise_", "data_") in names)


def pairs_source(path: str, image_size: int, num_channels: int) -> tuple[int, LoadFn]:
  """A source over the (noise, data) couplings of ``write_pairs`` shards, memory-mapped."""
  shards = pair_shards(path)
  if not shards:
    raise FileNotFoundError(f"No (noise, data) pairs in {path}: write them with --mode reflow_pairs "
                            "(configs/digits/reflow.py names the folder in config.data.path).")
  noise = [np.load(os.path.join(path, f"noise_{i:05d}.npy"), mmap_mode="r") for i in shards]
  data = [np.load(os.path.join(path, f"data_{i:05d}.npy"), mmap_mode="r") for i in shards]
  expected = (image_size, image_size, num_channels)
  if noise[0].shape[1:] != expected:
    raise ValueError(f"The pairs in {path} are {noise[0].shape[1:]}, but the config asks for "
                     f"{expected} (config.data.image_size, num_channels).")
  starts = np.cumsum([0] + [len(n) for n in noise])

  def load(index: int) -> tuple:
    shard = int(np.searchsorted(starts, index, side="right")) - 1
    row = index - starts[shard]
    return np.array(data[shard][row]), NO_LABEL, np.array(noise[shard][row])

  return int(starts[-1]), load


def list_image_files(path: str) -> list[str]:
  """All PNG/JPEG files under `path`, recursively, in sorted (deterministic) order."""
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"path={path!r} is not a directory; point it at a folder of PNG/JPEG images.")
  files = sorted(
      os.path.join(root, name)
      for root, _, names in os.walk(path, followlinks=True)
      for name in names
      if name.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise FileNotFoundError(f"No {'/'.join(IMAGE_EXTENSIONS)} files found under {path!r}.")
  return files


def read_image(path: str, num_channels: int) -> np.ndarray:
  """Decodes an image file to float32 [H, W, num_channels] in [0, 1]; names the file on failure."""
  try:
    with Image.open(path) as image:
      image = image.convert("L" if num_channels == 1 else "RGB")
      array = np.asarray(image, dtype=np.uint8)
  except Exception as error:  # Pillow raises several types for truncated or invalid files
    raise ValueError(f"Corrupt or unreadable image file {path!r}: {error}") from error
  return array.reshape(*array.shape[:2], num_channels).astype(np.float32) / 255.0


def folder_source(path: str, image_size: int, num_channels: int) -> tuple[int, LoadFn]:
  """A source over the image files under `path`, centrally cropped and resized like LSUN."""
  files = list_image_files(path)

  def load(index: int) -> tuple[np.ndarray, int]:
    return crop_resize(read_image(files[index], num_channels), image_size), NO_LABEL

  return len(files), load


def tfds_source(name: str, split: str, data_dir: str | None,
                resize_op: Callable[[np.ndarray], np.ndarray], num_channels: int
                ) -> tuple[int, LoadFn]:
  """A random-access source over a tfds dataset prepared in array_record format."""
  import tensorflow_datasets as tfds

  try:
    data = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as error:
    raise RuntimeError(
        f"Cannot open tfds dataset {name!r} (split {split!r}, data_dir {data_dir!r}) for "
        f"random access: {error}\nPrepare it once in array_record format, e.g. "
        f"`tfds build {name} --file_format=array_record --data_dir=DIR`, and pass "
        f"data_dir=DIR.") from error

  def load(index: int) -> tuple[np.ndarray, int]:
    example = data[index]
    if "image" not in example:
      raise ValueError(f"tfds dataset {name!r} has no 'image' feature: {sorted(example)}.")
    image = np.asarray(example["image"])
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] != num_channels:
      raise ValueError(
          f"tfds dataset {name!r} has {image.shape[-1]}-channel images but "
          f"num_channels={num_channels}; set it to {image.shape[-1]}.")
    label = int(example["label"]) if "label" in example else NO_LABEL
    return resize_op(image.astype(np.float32) / 255.0), label

  return len(data), load


# ----------------------------------------------------------------------------------------------
# Ordering: which example and which augmentation randomness each batch position gets.


def batch_positions(step: int, global_batch_size: int, process_index: int,
                    process_count: int) -> np.ndarray:
  """Stream positions of this process's slice of global batch `step` (int64 [B_local])."""
  local = global_batch_size // process_count
  start = step * global_batch_size + process_index * local
  return np.arange(start, start + local, dtype=np.int64)


@functools.lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng((seed, 1, epoch)).permutation(num_examples)


def example_indices(positions: np.ndarray, num_examples: int, seed: int,
                    shuffle: bool) -> np.ndarray:
  """Example index at each stream position: epoch e = position // N is a permutation from (seed, e)."""
  epochs, offsets = np.divmod(positions, num_examples)
  indices = np.empty_like(positions)
  for epoch in np.unique(epochs):
    selected = epochs == epoch
    indices[selected] = _epoch_order(num_examples, seed, int(epoch), shuffle)[offsets[selected]]
  return indices


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Per-example randomness of the reference preprocessing, drawn from (seed, stream position)."""
  random_flip: bool
  uniform_dequantization: bool
  seed: int

  def __call__(self, image: np.ndarray, position: int) -> np.ndarray:
    if not (self.random_flip or self.uniform_dequantization):
      return image
    rng = np.random.default_rng((self.seed, 0, position))
    if self.random_flip and rng.random() < 0.5:
      image = image[:, ::-1]
    if self.uniform_dequantization:
      # Uniform dequantization of 8-bit data (Theis et al., 2016): (u + 255 x) / 256.
      image = (rng.random(image.shape, dtype=np.float32) + 255.0 * image) / 256.0
    return image


# ----------------------------------------------------------------------------------------------
# Batching: a grain pipeline over global batch indices.


def _num_batches(num_examples: int, global_batch_size: int, num_epochs: int | None,
                 drop_remainder: bool) -> int | None:
  if num_epochs is None:
    return None
  full, partial = divmod(num_epochs * num_examples, global_batch_size)
  return full + int(partial > 0 and not drop_remainder)


@dataclasses.dataclass(frozen=True)
class _MakeBatch:
  """Global batch index -> this process's slice of it, decoded and augmented."""
  load: LoadFn
  num_examples: int
  global_batch_size: int
  process_index: int
  process_count: int
  seed: int
  shuffle: bool
  augmentation: Augmentation
  total_positions: int | None  # stream length of a finite stream

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    positions = batch_positions(step, self.global_batch_size, self.process_index,
                                self.process_count)
    mask = np.ones(positions.shape, dtype=bool)
    if self.total_positions is not None:
      mask = positions < self.total_positions
      # Padding repeats valid examples (from the start of the stream) and is masked out.
      positions = np.where(mask, positions, positions % self.total_positions)
    indices = example_indices(positions, self.num_examples, self.seed, self.shuffle)
    examples = [self._example(int(i), int(p)) for i, p in zip(indices, positions)]
    batch = {
        "image": np.stack([example[0] for example in examples]),  # [B_local, H, W, C]
        "label": np.asarray([example[1] for example in examples], dtype=np.int32),  # [B_local]
        "mask": mask,  # [B_local]
    }
    if len(examples[0]) == 3:  # a pairs source: the noise each image is coupled with
      batch["noise"] = np.stack([example[2] for example in examples])
    return batch

  def _example(self, index: int, position: int) -> tuple:
    image, *rest = self.load(index)
    return (self.augmentation(image, position).astype(np.float32, copy=False), *rest)


class BatchIterator(grain.DatasetIterator):
  """Iterator over this process's slices of the global batches, a grain `DatasetIterator`.

  Yields dicts with 'image' float32 [B_local, H, W, C] in [0, 1], 'label' int32 [B_local]
  (NO_LABEL = -1 where the source has none) and 'mask' bool [B_local], False only on the padding
  of a final partial batch (when `drop_remainder=False`). `step` is the index of the next batch.
  The pipeline is `batches[offset:]`, prefetched by threads (and worker processes);
  `get_state` / `set_state` (grain's checkpoint API) save and restore the position exactly.
  """

  def __init__(self, batches: grain.MapDataset, num_examples: int, num_batches: int | None,
               start_step: int, read_options: grain.ReadOptions, worker_processes: int):
    super().__init__()
    self.num_examples = num_examples
    self.num_batches = num_batches
    self._batches = batches
    self._read_options = read_options
    self._worker_processes = worker_processes
    self._pipeline = None
    self._open(start_step)

  def _open(self, offset: int) -> None:
    """(Re)opens the pipeline at global batch `offset`."""
    if self._pipeline is not None:
      self._pipeline.close()
    pipeline = self._batches[offset:].to_iter_dataset(self._read_options)
    if self._worker_processes:
      # grain 0.2.18 reads this absl flag when it starts workers, even outside an absl app.
      flags.FLAGS["grain_enable_multiprocess_worker_profiling"].present = True
      pipeline = pipeline.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._worker_processes,
          per_worker_buffer_size=self._read_options.prefetch_buffer_size))
    self._pipeline = pipeline.__iter__()
    self._offset = self.step = offset

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("An infinite BatchIterator (num_epochs=None) has no length.")
    return self.num_batches

  def __next__(self) -> dict[str, np.ndarray]:
    if self.num_batches is not None and self.step >= self.num_batches:
      self.close()
      raise StopIteration
    try:
      batch = next(self._pipeline)
    except BaseException:
      self.close()
      raise
    self.step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """{'step': next batch, 'offset': the pipeline's first batch, 'pipeline': grain's state}."""
    return {"step": self.step, "offset": self._offset, "pipeline": self._pipeline.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores a `get_state`; on an error the position is unchanged."""
    step = self.step
    try:
      if state["offset"] != self._offset:
        self._open(int(state["offset"]))
      self._pipeline.set_state(state["pipeline"])
    except Exception:
      self._open(step)
      raise
    self.step = int(state["step"])

  def start_prefetch(self) -> None:
    self._pipeline.start_prefetch()

  def close(self) -> None:
    """Stops the decoding threads (and worker processes); prefetched batches are dropped."""
    super().close()
    self._pipeline.close()

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# ----------------------------------------------------------------------------------------------
# Entry point.


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Which images to read, at what size: the `data` fields of the reference configs."""
  dataset: str  # one of DATASETS, case-insensitive
  image_size: int
  num_channels: int  # 1 or 3
  path: str | None = None  # folder: the image folder
  category: str | None = None  # LSUN, e.g. 'church_outdoor'
  tfds_name: str | None = None  # TFDS, e.g. 'mnist'
  data_dir: str | None = None  # tfds data directory (default: tfds's)


def _check_positive_int(value: Any, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f"{field} must be a positive integer, got {value!r}.")
  return int(value)


def check_data_spec(spec: DataSpec, prefix: str = "") -> DataSpec:
  """`spec` with its dataset name canonical; a ValueError names a bad field as `prefix + field`."""
  by_lower = {choice.lower(): choice for choice in DATASETS}
  if not isinstance(spec.dataset, str) or spec.dataset.lower() not in by_lower:
    raise ValueError(f"Unknown {prefix}dataset={spec.dataset!r}; choose one of {list(DATASETS)}.")
  dataset = by_lower[spec.dataset.lower()]
  image_size = _check_positive_int(spec.image_size, f"{prefix}image_size")
  num_channels = _check_positive_int(spec.num_channels, f"{prefix}num_channels")
  if num_channels not in (1, 3):
    raise ValueError(f"{prefix}num_channels must be 1 or 3, got {num_channels}.")
  if dataset == "digits" and num_channels != 1:
    raise ValueError(f"The digits are grey: set {prefix}num_channels=1.")
  examples = {"folder": ("path", "<image folder>"), "pairs": ("path", "<workdir>/reflow_pairs"),
              "LSUN": ("category", "'church_outdoor'"),
              "TFDS": ("tfds_name", "'mnist'")}
  if dataset in examples:
    field, example = examples[dataset]
    if not getattr(spec, field):
      raise ValueError(f"{prefix}dataset={dataset!r} needs {prefix}{field}, e.g. {example}.")
  return dataclasses.replace(spec, dataset=dataset, image_size=image_size,
                             num_channels=num_channels)


def get_source(spec: DataSpec, split: str) -> tuple[int, LoadFn]:
  """(number of examples, index -> (image [S, S, C] float32 in [0, 1], label)) of a dataset."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  spec = check_data_spec(spec)
  if spec.dataset == "digits":
    return array_source(*digits_split(split, spec.image_size))
  if spec.dataset == "folder":
    # A folder has a single split, used for both training and evaluation as in the reference.
    return folder_source(spec.path, spec.image_size, spec.num_channels)
  if spec.dataset == "pairs":  # one split, like a folder
    return pairs_source(spec.path, spec.image_size, spec.num_channels)
  name, train_split, test_split = _TFDS_DATASETS[spec.dataset]
  name = name.format(category=spec.category, tfds_name=spec.tfds_name)
  return tfds_source(name, train_split if split == "train" else test_split, spec.data_dir,
                     _resize_op(spec.dataset, spec.image_size), spec.num_channels)


def get_dataset(spec: DataSpec, *, batch_size: int, split: str = "train",
                random_flip: bool = False, uniform_dequantization: bool = False,
                process_index: int | None = None, process_count: int | None = None,
                shuffle_seed: int = 0, num_epochs: int | None = None, evaluation: bool = False,
                start_step: int = 0, shuffle: bool | None = None, drop_remainder: bool = True,
                num_workers: int | None = None, prefetch: int | None = None,
                worker_processes: int = 0) -> BatchIterator:
  """This process's batches of `split`, preprocessed as in the reference.

  Args:
    spec: the dataset and its image size and channels.
    batch_size: GLOBAL batch size over all processes. Must be divisible by `process_count`.
    split: 'train' or 'test' (the reference's evaluation split: 'validation' for CelebA/LSUN).
    random_flip: random horizontal flips (never when `evaluation`).
    uniform_dequantization: (u + 255 x) / 256 with uniform noise u instead of x.
    process_index, process_count: this process and how many there are; default to JAX's.
    shuffle_seed: seed of the epoch permutations and of the per-example flip and noise.
    num_epochs: passes over the split; None repeats forever.
    evaluation: disables the random flip and, unless `shuffle` is given, shuffling.
    start_step: index of the first batch, to resume a run exactly where it stopped.
    shuffle: whether epochs are permuted; defaults to `not evaluation`.
    drop_remainder: drop the final partial global batch of a finite stream; if False it is
      padded with repeated examples whose 'mask' is False.
    num_workers: grain's threads, each decoding one batch (default: min(8, number of CPUs)).
    prefetch: batches decoded ahead of the consumer (grain's prefetch buffer; at least, and by
      default, `num_workers`).
    worker_processes: if positive, grain's `mp_prefetch` decodes in that many processes.
  """
  import jax

  batch_size = _check_positive_int(batch_size, "batch_size")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"Global batch size {batch_size} is not divisible by the number of "
                     f"processes {process_count}; choose a multiple of {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count}).")
  if shuffle_seed < 0 or start_step < 0:
    raise ValueError(f"shuffle_seed ({shuffle_seed}) and start_step ({start_step}) must be >= 0.")
  if num_epochs is not None:
    _check_positive_int(num_epochs, "num_epochs")
  flips = bool(random_flip) and not evaluation
  if check_data_spec(spec).dataset == "pairs" and (flips or uniform_dequantization):
    raise ValueError("A flip or dequantization noise would break the (noise, data) couplings of a "
                     "pairs dataset: set config.data.random_flip=False and "
                     "config.data.uniform_dequantization=False.")
  num_examples, load = get_source(spec, split)
  if num_epochs is not None and drop_remainder and num_epochs * num_examples < batch_size:
    raise ValueError(f"{num_epochs} epoch(s) of the {num_examples} examples of split {split!r} "
                     f"do not fill one global batch of {batch_size}; use drop_remainder=False "
                     f"or a smaller batch.")
  augmentation = Augmentation(random_flip=flips,
                              uniform_dequantization=bool(uniform_dequantization),
                              seed=int(shuffle_seed))
  num_batches = _num_batches(num_examples, batch_size, num_epochs, drop_remainder)
  make_batch = _MakeBatch(
      load, num_examples, global_batch_size=batch_size, process_index=process_index,
      process_count=process_count, seed=int(shuffle_seed),
      shuffle=(not evaluation) if shuffle is None else shuffle, augmentation=augmentation,
      total_positions=None if num_epochs is None else num_epochs * num_examples)
  batches = grain.MapDataset.range(sys.maxsize if num_batches is None else num_batches)
  threads = num_workers or min(8, os.cpu_count() or 1)
  read_options = grain.ReadOptions(num_threads=threads,
                                   prefetch_buffer_size=max(prefetch or 0, threads))
  return BatchIterator(batches.map(make_batch), num_examples, num_batches, start_step,
                       read_options, worker_processes)
