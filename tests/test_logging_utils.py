"""Tests of TensorBoard writing/reading, PNG grids and progress bars (score_sde.io.logging_utils)."""
import glob
import io
import os

import numpy as np
import pytest
from PIL import Image

from score_sde.io import logging_utils


def random_uint8_images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_grid_round_trips_pixels_and_layout(tmp_path, channels):
  images_u8 = random_uint8_images((5, 6, 7, channels))
  path = str(tmp_path / "sub" / "grid.png")
  written = logging_utils.save_image_grid(images_u8 / 255.0, path, nrow=3, padding=2,
                                          pad_value=1.0)
  with Image.open(path) as png:
    assert png.mode == ("L" if channels == 1 else "RGB")
    read = np.asarray(png).reshape(written.shape)
  np.testing.assert_array_equal(read, written)
  # 5 images with 3 per row: 2 rows of 3 cells of (6 + 2) x (7 + 2) plus the outer padding.
  assert read.shape == (2 * 8 + 2, 3 * 9 + 2, channels)
  filled = np.zeros(read.shape[:2], bool)
  for i in range(5):
    top, left = 2 + (i // 3) * 8, 2 + (i % 3) * 9
    np.testing.assert_array_equal(read[top:top + 6, left:left + 7], images_u8[i])
    filled[top:top + 6, left:left + 7] = True
  assert (read[~filled] == 255).all()  # padding and the empty sixth cell are pad_value


def test_uint8_conversion_rounds_and_clips_like_torchvision():
  k = np.arange(255, dtype=np.float64)
  x = np.concatenate([(k + 0.49) / 255, (k + 0.51) / 255, [-0.3, 1.7, np.nan]])
  expected = np.concatenate([k, k + 1, [0, 255, 0]]).astype(np.uint8)
  np.testing.assert_array_equal(logging_utils.to_uint8(x), expected)


def test_grid_defaults_and_errors():
  grid = logging_utils.make_grid(np.zeros((10, 4, 4, 3)))  # nrow = ceil(sqrt(10)) = 4
  assert grid.shape == (3 * 6 + 2, 4 * 6 + 2, 3)
  assert logging_utils.make_grid(np.zeros((2, 4, 4, 1)), nrow=8).shape == (8, 14, 1)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    logging_utils.make_grid(np.zeros((4, 4, 3)))


def test_event_file_contains_scalars_and_image(tmp_path):
  logdir = str(tmp_path / "tb")
  losses = [1.5, 0.75, 0.375, float("nan")]
  images = random_uint8_images((4, 5, 5, 3), seed=1) / 255.0
  with logging_utils.MetricWriter(logdir, process_index=0) as writer:
    for step, loss in enumerate(losses):
      writer.scalars(step, {"train/loss": np.float32(loss), "train/lr": 2e-4 * step,
                            "train/grad_norm": np.array(0.5 + step)})
    writer.scalars(10, {"eval/loss": 0.25, "eval/bits_per_dim": 3.125})
    writer.image_grid(10, "samples", images, nrow=2)
  scalars = logging_utils.read_scalars(logdir)
  assert set(scalars) == {"train/loss", "train/lr", "train/grad_norm", "eval/loss",
                          "eval/bits_per_dim"}
  steps, values = zip(*scalars["train/loss"])
  assert steps == (0, 1, 2, 3)
  np.testing.assert_array_equal(values[:3], losses[:3])  # exact in float32
  assert np.isnan(values[3])
  np.testing.assert_allclose([v for _, v in scalars["train/lr"]],
                             np.float32(2e-4 * np.arange(4)), rtol=0)
  assert scalars["eval/bits_per_dim"] == [(10, 3.125)]
  # The logged image is the same grid that save_image_grid writes.
  (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  encoded = [value.image.encoded_image_string for event in logging_utils.read_events(path)
             for value in event.summary.value if value.tag == "samples"]
  assert len(encoded) == 1
  with Image.open(io.BytesIO(encoded[0])) as png:
    logged = np.asarray(png)
  np.testing.assert_array_equal(logged, logging_utils.save_image_grid(
      images, str(tmp_path / "grid.png"), nrow=2))


def test_corrupt_event_file_is_detected(tmp_path):
  logdir = str(tmp_path)
  with logging_utils.MetricWriter(logdir, process_index=0) as writer:
    writer.scalars(0, {"loss": 1.0})
  (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  data = bytearray(open(path, "rb").read())
  data[-6] ^= 0xFF  # inside the last record's body
  open(path, "wb").write(bytes(data))
  with pytest.raises(ValueError, match="checksum"):
    logging_utils.read_scalars(logdir)


def test_only_process_zero_writes(tmp_path):
  with logging_utils.MetricWriter(str(tmp_path / "p1"), process_index=1) as writer:
    assert not writer.enabled
    writer.scalars(0, {"loss": 1.0})
    writer.image_grid(0, "samples", np.zeros((1, 2, 2, 1)))
  assert not os.path.exists(tmp_path / "p1")


def test_progress_bar_shows_rate_eta_and_throughput(capsys):
  with logging_utils.ProgressBar(4, desc="train", examples_per_step=128, process_index=0,
                                 enabled=True) as bar:
    for _ in range(4):
      bar.update(1, loss=0.5)
  err = capsys.readouterr().err
  assert "train" in err and "4/4" in err and "step/s" in err and "loss=0.5" in err
  assert "ex/s=" in err and "<00:00" in err  # throughput in examples/s and the ETA
  for kwargs in ({"process_index": 1, "enabled": True}, {"process_index": 0}):
    # Non-zero process, or stderr not a terminal (pytest captures it): nothing is printed.
    with logging_utils.ProgressBar(3, **kwargs) as bar:
      assert not bar.enabled
      bar.update(3, loss=1.0)
    assert capsys.readouterr().err == ""
