"""Tests of the host-side input pipelines (score_sde.io.datasets), mostly driven by a config
through score_sde.experiment.builders, as runs drive them."""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from score_sde.experiment import builders
from score_sde.io import datasets


def make_config(dataset="digits", image_size=16, num_channels=1, random_flip=False,
                centered=False, uniform_dequantization=False, **extra):
  return ml_collections.ConfigDict({
      "data": dict(dataset=dataset, image_size=image_size, num_channels=num_channels,
                   random_flip=random_flip, centered=centered,
                   uniform_dequantization=uniform_dequantization, **extra),
      "training": dict(batch_size=8),
      "eval": dict(batch_size=8),
  })


def take(iterator, n):
  with iterator:
    return [next(iterator) for _ in range(n)]


def batches_equal(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "label", "mask"))


def single_process(config, **kwargs):
  return builders.get_dataset(config, process_index=0, process_count=1, **kwargs)


# ---------------------------------------------------------------------------------------------
# Built-in digits.


def test_digits_identity_size_matches_sklearn_and_labels():
  # At 8x8 there is no resize: images are the sklearn digits with grey levels 0..16 -> [0, 1],
  # rounded to the 8-bit grid, and each carries its own label.
  digits = load_digits()
  reference = {np.round(x * 255.0 / 16.0).astype(np.uint8).tobytes(): y
               for x, y in zip(digits.images, digits.target)}
  batch = take(single_process(make_config(image_size=8), batch_size=64), 1)[0]
  assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  for image, label in zip(batch["image"], batch["label"]):
    key = np.round(image[..., 0] * 255.0).astype(np.uint8).tobytes()
    assert reference[key] == label


@pytest.mark.parametrize("image_size", [16, 32])
def test_digits_shapes_range_and_grid(image_size):
  batch = take(single_process(make_config(image_size=image_size), batch_size=32), 1)[0]
  images = batch["image"]
  assert images.shape == (32, image_size, image_size, 1)
  assert images.min() >= 0.0 and images.max() <= 1.0
  np.testing.assert_allclose(images * 255.0, np.round(images * 255.0), atol=1e-4)  # 8-bit grid
  # Bicubic upsampling preserves the digits: averaging the upsampled images over blocks of
  # (image_size / 8)^2 pixels gives back the 8x8 originals up to the interpolation error.
  originals, _ = datasets.digits_split("train", 8)
  upsampled, _ = datasets.digits_split("train", image_size)
  k = image_size // 8
  blocks = (upsampled / 255.0).reshape(-1, 8, k, 8, k).mean(axis=(2, 4))  # [N, 8, 8]
  assert np.corrcoef(blocks.ravel(), originals.ravel())[0, 1] > 0.98
  assert abs(blocks.mean() - originals.mean() / 255.0) < 0.01


def test_digits_split_sizes_disjoint_and_complete():
  train_images, train_labels = datasets.digits_split("train", 8)
  test_images, test_labels = datasets.digits_split("test", 8)
  assert len(train_images) == 1500 and len(test_images) == datasets.DIGITS_NUM_TEST == 297
  # Together the splits are exactly the 1797 sklearn digits (as a multiset of image+label).
  digits = load_digits()
  expected = sorted(np.round(x * 255 / 16).astype(np.uint8).tobytes() + bytes([y])
                    for x, y in zip(digits.images, digits.target))
  got = sorted(x.tobytes() + bytes([y]) for x, y in zip(
      np.concatenate([train_images, test_images]), np.concatenate([train_labels, test_labels])))
  assert got == expected
  assert single_process(make_config(), split="test", batch_size=8).num_examples == 297


def test_one_epoch_visits_every_example_once_with_padding():
  iterator = single_process(make_config(image_size=8), split="test", batch_size=64,
                            num_epochs=1, drop_remainder=False, shuffle=True)
  assert len(iterator) == 5  # ceil(297 / 64)
  batches = list(iterator)
  assert len(batches) == 5
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 297 and not mask[297:].any()
  images = np.concatenate([b["image"] for b in batches])[mask]
  labels = np.concatenate([b["label"] for b in batches])[mask]
  test_images, test_labels = datasets.digits_split("test", 8)
  key = lambda x, y: np.round(x * 255).astype(np.uint8).tobytes() + bytes([y])
  assert sorted(map(key, images, labels)) == sorted(
      map(key, test_images.astype(np.float32) / 255, test_labels))
  # drop_remainder=True keeps only the 4 full batches.
  assert len(single_process(make_config(), split="test", batch_size=64, num_epochs=1)) == 4


def test_deterministic_given_seed_and_different_across_seeds():
  config = make_config(random_flip=True, uniform_dequantization=True)
  first = take(single_process(config, batch_size=16, shuffle_seed=3), 3)
  again = take(single_process(config, batch_size=16, shuffle_seed=3), 3)
  other = take(single_process(config, batch_size=16, shuffle_seed=4), 3)
  assert batches_equal(first, again)
  assert not np.array_equal(first[0]["label"], other[0]["label"])


def test_epochs_are_reshuffled():
  config = make_config(image_size=8)
  # 1500 train digits with batch 500: batches 0-2 are epoch 0, batches 3-5 are epoch 1.
  batches = take(single_process(config, batch_size=500), 6)
  epoch0 = np.concatenate([b["label"] for b in batches[:3]])
  epoch1 = np.concatenate([b["label"] for b in batches[3:]])
  assert np.array_equal(np.sort(epoch0), np.sort(epoch1))  # both are the whole split
  assert not np.array_equal(epoch0, epoch1)  # in a different order


# ---------------------------------------------------------------------------------------------
# Multi-process sharding and exact resume.


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_global_batch(process_count):
  # Flip and dequantization are on, so the per-example randomness must not depend on the process.
  config = make_config(random_flip=True, uniform_dequantization=True)
  steps = 14  # 14 * 128 > 1500: crosses an epoch boundary
  whole = take(single_process(config, batch_size=128, shuffle_seed=7), steps)
  shards = [take(builders.get_dataset(config, batch_size=128, shuffle_seed=7,
                                         process_index=p, process_count=process_count), steps)
            for p in range(process_count)]
  for step in range(steps):
    for key in ("image", "label", "mask"):
      parts = [shards[p][step][key] for p in range(process_count)]
      assert parts[0].shape[0] == 128 // process_count
      np.testing.assert_array_equal(np.concatenate(parts), whole[step][key])


def test_batch_not_divisible_by_processes_is_an_error():
  with pytest.raises(ValueError, match="not divisible"):
    builders.get_dataset(make_config(), batch_size=10, process_index=0, process_count=4)


def test_resume_from_start_step_reproduces_the_stream():
  config = make_config(random_flip=True, uniform_dequantization=True)
  uninterrupted = take(single_process(config, batch_size=128, shuffle_seed=1), 15)
  for start in (5, 11, 12):  # 11 * 128 < 1500 < 12 * 128: the resumed batch straddles epochs
    resumed = single_process(config, batch_size=128, shuffle_seed=1, start_step=start)
    assert resumed.step == start
    assert batches_equal(take(resumed, 15 - start), uninterrupted[start:])


def test_finite_stream_length_and_stop():
  iterator = single_process(make_config(), batch_size=100, num_epochs=2)
  assert len(iterator) == 30  # 2 * 1500 / 100
  assert sum(1 for _ in iterator) == 30
  with pytest.raises(TypeError, match="infinite"):
    len(single_process(make_config(), batch_size=100))


# ---------------------------------------------------------------------------------------------
# Preprocessing: flip, dequantization, scaling.


def test_random_flip_mirrors_about_half_and_is_off_in_evaluation():
  plain = take(single_process(make_config(), batch_size=500, shuffle=False), 1)[0]["image"]
  flipped = take(single_process(make_config(random_flip=True), batch_size=500, shuffle=False),
                 1)[0]["image"]
  is_same = np.array([np.array_equal(a, b) for a, b in zip(plain, flipped)])
  is_mirror = np.array([np.array_equal(a[:, ::-1], b) for a, b in zip(plain, flipped)])
  assert (is_same | is_mirror).all()
  # Binomial(500, 1/2) mirrors; 0.35..0.65 is > 6 standard deviations (0.022) wide.
  assert 0.35 < np.mean(is_mirror & ~is_same) < 0.65
  evaluation = take(single_process(make_config(random_flip=True), batch_size=500,
                                   evaluation=True), 1)[0]["image"]
  np.testing.assert_array_equal(evaluation, plain)


def test_uniform_dequantization_statistics():
  config = make_config(image_size=32)
  plain = take(single_process(config, batch_size=128, shuffle=False), 1)[0]["image"]
  noisy = take(single_process(config, batch_size=128, shuffle=False,
                              uniform_dequantization=True), 1)[0]["image"]
  u = (256.0 * noisy.astype(np.float64) - 255.0 * plain).ravel()  # (u + 255 x) / 256 solved for u
  n = u.size  # 131072 draws
  assert u.min() >= -1e-4 and u.max() <= 1.0 + 1e-4
  # U(0, 1): mean 1/2 and variance 1/12; 6-sigma bounds for the sample mean and variance.
  assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / n)
  assert abs(u.var() - 1 / 12) < 6 * np.sqrt(1 / 180 / n)  # Var[(u - 1/2)^2] = 1/180
  counts, _ = np.histogram(u, bins=10, range=(0, 1))
  assert np.all(np.abs(counts - n / 10) < 6 * np.sqrt(n / 10 * 0.9))
  # Dequantized data stay inside [0, 1].
  assert noisy.min() >= 0.0 and noisy.max() <= 1.0


def test_config_dequantization_flag_is_the_default():
  config = make_config(uniform_dequantization=True)
  plain = take(single_process(make_config(), batch_size=8, shuffle=False), 1)[0]["image"]
  noisy = take(single_process(config, batch_size=8, shuffle=False), 1)[0]["image"]
  assert not np.array_equal(plain, noisy)
  np.testing.assert_array_less(np.abs(noisy - plain), 1 / 256 + 1e-6)


@pytest.mark.parametrize("centered", [False, True])
def test_data_scaler_and_inverse(centered):
  x = np.linspace(0.0, 1.0, 11)
  scaled = datasets.get_data_scaler(centered)(x)
  expected = 2 * x - 1 if centered else x
  np.testing.assert_allclose(scaled, expected, atol=1e-12)
  np.testing.assert_allclose(datasets.get_data_inverse_scaler(centered)(scaled), x, atol=1e-12)
  config = make_config(centered=centered)
  np.testing.assert_allclose(builders.get_data_scaler(config)(x), expected, atol=1e-12)
  np.testing.assert_allclose(builders.get_data_inverse_scaler(config)(scaled), x, atol=1e-12)


def test_resize_agrees_with_pillow_uint8_and_keeps_constants():
  rng = np.random.default_rng(0)
  image_u8 = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
  for method, resample in (("bilinear", Image.Resampling.BILINEAR),
                           ("bicubic", Image.Resampling.BICUBIC)):
    ours = datasets.resize(image_u8.astype(np.float32) / 255, 16, 12, method)
    pillow = np.asarray(Image.fromarray(image_u8).resize((12, 16), resample=resample))
    # Pillow's uint8 path rounds (and clips) its result: within 1/255 of the float result.
    np.testing.assert_allclose(np.clip(ours, 0, 1), pillow / 255.0, atol=1.01 / 255)
  constant = np.full((40, 30, 1), 0.25, np.float32)
  np.testing.assert_allclose(datasets.resize(constant, 7, 9, "bicubic"), 0.25, atol=1e-6)


def test_central_crop_and_resize_small():
  image = np.arange(218 * 178, dtype=np.float32).reshape(218, 178, 1)
  crop = datasets.central_crop(image, 140)
  np.testing.assert_array_equal(crop, image[39:179, 19:159])
  assert datasets.resize_small(np.zeros((100, 50, 3), np.float32), 20).shape == (40, 20, 3)


# ---------------------------------------------------------------------------------------------
# A folder of images.


def write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def test_folder_reads_recursively_with_central_crop(tmp_path):
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]
  write_png(str(tmp_path / "a" / "0.png"), arrays[0])
  write_png(str(tmp_path / "a" / "b" / "1.PNG"), arrays[1])
  write_png(str(tmp_path / "2.png"), arrays[2])
  (tmp_path / "notes.txt").write_text("not an image")
  config = make_config("folder", image_size=20, num_channels=3, path=str(tmp_path))
  iterator = single_process(config, batch_size=3, shuffle=False)
  assert iterator.num_examples == 3
  batch = take(iterator, 1)[0]
  # Sorted paths: 2.png, a/0.png, a/b/1.PNG; a 20x30 image is cropped to its central 20x20.
  expected = np.stack([arrays[2], arrays[0], arrays[1]])[:, :, 5:25] / 255.0
  np.testing.assert_allclose(batch["image"], expected, atol=1e-6)
  np.testing.assert_array_equal(batch["label"], datasets.NO_LABEL)


def test_folder_converts_to_grey_and_resizes(tmp_path):
  write_png(str(tmp_path / "x.png"), np.full((64, 48, 3), 200, np.uint8))
  config = make_config("folder", image_size=16, num_channels=1, path=str(tmp_path))
  batch = take(single_process(config, batch_size=2), 1)[0]
  assert batch["image"].shape == (2, 16, 16, 1)
  np.testing.assert_allclose(batch["image"], 200 / 255, atol=1e-6)


def test_corrupt_image_error_names_the_file(tmp_path):
  write_png(str(tmp_path / "good.png"), np.zeros((8, 8, 3), np.uint8))
  write_png(str(tmp_path / "bad.png"), np.random.default_rng(0).integers(
      0, 256, (32, 32, 3), dtype=np.uint8))
  data = (tmp_path / "bad.png").read_bytes()
  (tmp_path / "bad.png").write_bytes(data[: len(data) // 2])  # truncated PNG
  config = make_config("folder", image_size=8, num_channels=3, path=str(tmp_path))
  iterator = single_process(config, batch_size=2, shuffle=False)
  with pytest.raises(ValueError, match="bad.png"):
    next(iterator)


def test_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    single_process(make_config("folder", path=str(tmp_path / "missing")))
  with pytest.raises(FileNotFoundError, match="No .png"):
    single_process(make_config("folder", path=str(tmp_path)))
  with pytest.raises(ValueError, match="config.data.path"):
    single_process(make_config("folder"))


def test_unknown_dataset_lists_choices():
  with pytest.raises(ValueError, match="CIFAR10.*digits.*folder"):
    single_process(make_config("mnist-typo"))
  with pytest.raises(ValueError, match="num_channels=1"):
    single_process(make_config(num_channels=3))
  with pytest.raises(ValueError, match="category"):
    single_process(make_config("LSUN", num_channels=3))


def test_library_errors_name_the_arguments():
  spec = datasets.DataSpec("folder", image_size=8, num_channels=3)
  with pytest.raises(ValueError, match="dataset='folder' needs path, e.g.") as error:
    datasets.get_dataset(spec, batch_size=2)
  assert "config" not in str(error.value)
  with pytest.raises(ValueError, match="^Unknown dataset='mnist-typo'"):
    datasets.get_source(datasets.DataSpec("mnist-typo", 8, 1), "train")
  with pytest.raises(ValueError, match="^image_size must be a positive integer"):
    datasets.get_source(datasets.DataSpec("digits", 0, 1), "train")
  with pytest.raises(ValueError, match="config.data.num_channels must be 1 or 3"):
    builders.data_spec(make_config(num_channels=2))
  assert datasets.check_data_spec(datasets.DataSpec("cifar10", 32, 3)).dataset == "CIFAR10"


# ---------------------------------------------------------------------------------------------
# tfds datasets, through tfds.testing.mock_data (no TensorFlow, no download).


@pytest.mark.parametrize("dataset,image_size,extra", [
    ("CIFAR10", 32, {}), ("SVHN", 16, {}), ("CELEBA", 64, {}),
    ("LSUN", 64, {"category": "church_outdoor"}), ("LSUN", 128, {"category": "bedroom"})])
def test_tfds_reference_datasets_with_mock_data(dataset, image_size, extra):
  config = make_config(dataset, image_size=image_size, num_channels=3, random_flip=True,
                       **extra)
  with tfds.testing.mock_data(num_examples=6):
    for split in ("train", "test"):
      batch = take(single_process(config, split=split, batch_size=4), 2)[1]
      assert batch["image"].shape == (4, image_size, image_size, 3)
      assert batch["image"].dtype == np.float32
      assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
      # Mock pixels are uniform on 0..255 (resizing averages them): mean 1/2, not constant.
      assert batch["image"].std() > 0.05 and 0.4 < batch["image"].mean() < 0.6
      if dataset in ("CIFAR10", "SVHN"):
        assert ((0 <= batch["label"]) & (batch["label"] < 10)).all()
      else:
        np.testing.assert_array_equal(batch["label"], datasets.NO_LABEL)


def test_celeba_preprocessing_matches_crop_then_pillow_resize():
  config = make_config("CELEBA", image_size=64, num_channels=3)
  with tfds.testing.mock_data(num_examples=3):
    raw = tfds.data_source("celeb_a", split="train")[1]["image"]  # [218, 178, 3] uint8
    batch = take(single_process(config, batch_size=3, shuffle=False), 1)[0]
  # Central 140x140 crop starts at ((218 - 140) // 2, (178 - 140) // 2) = (39, 19).
  crop = Image.fromarray(raw[39:179, 19:159])
  expected = np.asarray(crop.resize((64, 64), Image.Resampling.BILINEAR)) / 255.0
  np.testing.assert_allclose(batch["image"][1], expected, atol=1.01 / 255)


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
  config = make_config("TFDS", num_channels=3, tfds_name="cifar10", data_dir=str(tmp_path))
  with pytest.raises(RuntimeError, match="tfds build cifar10"):
    single_process(config)


# ---------------------------------------------------------------------------------------------
# A real array_record dataset built with tfds's own builder machinery (no TensorFlow needed
# when the images are given as PIL images).


class ScoreSdeTestImages(tfds.core.GeneratorBasedBuilder):
  """Tiny labelled RGB dataset: 10 train and 6 test images of 12x12."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(num_classes=4)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(10, 0), "test": self._generate_examples(6, 1)}

  def _generate_examples(self, n, seed):
    for i, image in enumerate(tiny_images(n, seed)):
      yield i, {"image": Image.fromarray(image), "label": i % 4}


def tiny_images(n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)


def test_array_record_dataset_round_trip(tmp_path):
  ScoreSdeTestImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  config = make_config("TFDS", image_size=12, num_channels=3, tfds_name="score_sde_test_images",
                       data_dir=str(tmp_path))
  for split, seed, n in (("train", 0, 10), ("test", 1, 6)):
    iterator = single_process(config, split=split, batch_size=n, evaluation=True, num_epochs=1)
    assert iterator.num_examples == n
    batch = take(iterator, 1)[0]
    # tfds stores the records in a hashed order: match each image to the one written.
    written = {image.tobytes(): i for i, image in enumerate(tiny_images(n, seed))}
    read = np.round(batch["image"] * 255.0).astype(np.uint8)
    np.testing.assert_allclose(read / 255.0, batch["image"], atol=1e-6)
    order = [written[image.tobytes()] for image in read]
    assert sorted(order) == list(range(n))
    np.testing.assert_array_equal(batch["label"], np.array(order) % 4)
  # Resized and sharded over two processes like any other source.
  config.data.image_size = 8
  whole = take(single_process(config, batch_size=4, shuffle_seed=2), 3)
  halves = [take(builders.get_dataset(config, batch_size=4, shuffle_seed=2, process_index=p,
                                         process_count=2), 3) for p in (0, 1)]
  for step in range(3):
    assert whole[step]["image"].shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(
        np.concatenate([halves[0][step]["image"], halves[1][step]["image"]]),
        whole[step]["image"])
  with pytest.raises(ValueError, match="num_channels=1; set it to 3"):
    next(single_process(make_config("TFDS", image_size=8, num_channels=1,
                                    tfds_name="score_sde_test_images",
                                    data_dir=str(tmp_path)), batch_size=2))


def test_defaults_come_from_config_and_jax():
  config = make_config()
  config.training.batch_size, config.eval.batch_size = 12, 6
  train = builders.get_dataset(config)  # jax.process_index() == 0 of jax.process_count() == 1
  assert take(train, 1)[0]["image"].shape == (12, 16, 16, 1)
  test = builders.get_dataset(config, split="test", evaluation=True)
  assert take(test, 1)[0]["image"].shape == (6, 16, 16, 1)
  with pytest.raises(ValueError, match="split must be"):
    builders.get_dataset(config, split="validation")


# ---------------------------------------------------------------------------------------------
# The grain pipeline: state, worker processes.


def test_grain_state_round_trip_restores_the_stream():
  config = make_config(random_flip=True, uniform_dequantization=True)
  uninterrupted = take(single_process(config, batch_size=64, shuffle_seed=2), 8)
  iterator = single_process(config, batch_size=64, shuffle_seed=2)
  with iterator:
    take_three = [next(iterator) for _ in range(3)]
    state = iterator.get_state()
  assert state == {"step": 3, "offset": 0, "pipeline": {"next_index": 3}}
  assert batches_equal(take_three, uninterrupted[:3])
  restored = single_process(config, batch_size=64, shuffle_seed=2)  # opened at step 0
  restored.set_state(state)
  assert restored.step == 3
  assert batches_equal(take(restored, 5), uninterrupted[3:])


@pytest.mark.slow  # two worker processes start: ~5 s
def test_worker_processes_give_the_same_batches():
  config = make_config(random_flip=True, uniform_dequantization=True)
  threads = take(single_process(config, batch_size=32, shuffle_seed=4, start_step=2), 4)
  with single_process(config, batch_size=32, shuffle_seed=4, start_step=2,
                      worker_processes=2) as processes:
    first = [next(processes) for _ in range(2)]
    state = processes.get_state()
  assert batches_equal(first, threads[:2])
  with single_process(config, batch_size=32, shuffle_seed=4, worker_processes=2) as resumed:
    resumed.set_state(state)
    assert batches_equal([next(resumed) for _ in range(2)], threads[2:])


def test_a_foreign_grain_state_leaves_the_position_unchanged():
  iterator = single_process(make_config(), batch_size=32, start_step=4)
  with pytest.raises(KeyError):
    iterator.set_state({"step": 9, "offset": 0, "pipeline": {"workers": []}})
  assert iterator.step == 4
  assert batches_equal(take(iterator, 1), take(single_process(make_config(), batch_size=32,
                                                              start_step=4), 1))
