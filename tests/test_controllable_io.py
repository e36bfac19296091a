"""Inpainting and colorization runs on a checkpoint: files in, files out, observed pixels kept."""
import os

import numpy as np
import pytest
from PIL import Image

from score_sde.io import checkpointing
from score_sde.experiment import builders, controllable_io
from tests.helpers.tiny_config import tiny_config

# End-to-end runs of the modes on a trained checkpoint: minutes on a CPU.
pytestmark = pytest.mark.slow


def _checkpointed(config, workdir):
  """A work directory holding a fresh (untrained, step 0) train state saved as checkpoint 1."""
  state = builders.build_experiment(config).init_state()
  ckpts = checkpointing.TrainCheckpoints(workdir)
  ckpts.save(1, state, snapshot=True)
  ckpts.wait_until_finished()
  ckpts.close()


def _write_inputs(folder, shape, n=3):
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
  for i, image in enumerate(images):
    Image.fromarray(image[..., 0] if shape[-1] == 1 else image).save(os.path.join(folder, f"im{i}.png"))
  return images


def _read(path):
  return np.asarray(Image.open(path))


def test_inpaint_keeps_observed_pixels_for_builtin_and_file_masks(tmp_path):
  config = tiny_config()
  config.model.num_scales = 10
  config.eval.batch_size = 2  # 3 inputs: a full and a padded batch
  workdir = str(tmp_path / "work")
  _checkpointed(config, workdir)
  inputs = _write_inputs(str(tmp_path / "in"), (8, 8, 1))[..., 0]

  path = controllable_io.inpaint(config, workdir, str(tmp_path / "in"), "left")
  out_dir = os.path.dirname(path)
  assert out_dir.endswith(os.path.join("inpainting", "left_0"))  # the state's step
  assert sorted(os.listdir(out_dir)) == ["grid.png", "im0.png", "im1.png", "im2.png"]
  for i in range(3):
    result = _read(os.path.join(out_dir, f"im{i}.png"))
    np.testing.assert_array_equal(result[:, 4:], inputs[i][:, 4:])  # kept: the right half
    assert np.any(result[:, :4] != inputs[i][:, :4])

  mask = np.zeros((8, 8), np.uint8)
  mask[::2] = 255  # keep even rows
  Image.fromarray(mask).save(str(tmp_path / "rows.png"))
  path = controllable_io.inpaint(config, workdir, str(tmp_path / "in"), str(tmp_path / "rows.png"))
  result = _read(os.path.join(os.path.dirname(path), "im1.png"))
  np.testing.assert_array_equal(result[::2], inputs[1][::2])


def test_inpaint_with_a_class_conditional_checkpoint_uses_the_null_class(tmp_path):
  config = tiny_config()
  config.model.num_classes = 10
  config.model.num_scales = 10
  workdir = str(tmp_path / "work")
  _checkpointed(config, workdir)
  inputs = _write_inputs(str(tmp_path / "in"), (8, 8, 1), n=2)[..., 0]
  path = controllable_io.inpaint(config, workdir, str(tmp_path / "in"), "top")
  result = _read(os.path.join(os.path.dirname(path), "im0.png"))
  np.testing.assert_array_equal(result[4:], inputs[0][4:])


def test_colorize_keeps_the_gray_image(tmp_path):
  config = tiny_config()
  config.data.num_channels = 3
  config.model.num_scales = 10
  # An untrained network's score is no guide; a VE SDE with a small sigma_max keeps the generated
  # colour coordinates small, so most pixels stay inside [0, 1] and their gray can be checked.
  config.training.sde = "vesde"
  config.model.sigma_min, config.model.sigma_max = 0.01, 0.05
  workdir = str(tmp_path / "work")
  _checkpointed(config, workdir)
  inputs = _write_inputs(str(tmp_path / "in"), (8, 8, 3), n=2)
  path = controllable_io.colorize(config, workdir, str(tmp_path / "in"))
  result = _read(os.path.join(os.path.dirname(path), "im0.png")).astype(np.float64)
  gray = inputs[0].astype(np.float64).mean(-1)
  unclipped = np.all((result > 0) & (result < 255), axis=-1)
  assert unclipped.sum() > 8
  # Channel mean of the result = gray input, up to the 8-bit rounding of three channels.
  np.testing.assert_array_less(np.abs(result.mean(-1) - gray)[unclipped], 1.0)
  assert result.std(-1).max() > 1.0  # it is coloured, not gray


def test_bad_inputs(tmp_path):
  config = tiny_config()
  with pytest.raises(FileNotFoundError, match="neither a built-in mask"):
    controllable_io.load_mask(str(tmp_path / "missing.png"), 8)
  with pytest.raises(ValueError, match="num_channels=3"):
    controllable_io.colorize(config, str(tmp_path), str(tmp_path))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
  workdir = str(tmp_path / "work")
  _checkpointed(config, workdir)
  with pytest.raises(ValueError, match="Corrupt or unreadable image file"):
    controllable_io.inpaint(config, workdir, str(tmp_path / "bad"), "center")
  with pytest.raises(FileNotFoundError, match=r"--input '.*nowhere': path=.* is not a directory"):
    controllable_io.inpaint(config, workdir, str(tmp_path / "nowhere"), "center")
