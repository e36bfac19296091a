"""End to end: a tiny config trains on the built-in digits, checkpoints, samples, and evaluates."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from score_sde.io import logging_utils
from score_sde.experiment import builders, evaluation, generate, loop, train
from tests.helpers.tiny_config import tiny_config

# End-to-end runs of the modes (train, sample, eval): minutes on a CPU.
pytestmark = pytest.mark.slow


def test_train_sample_and_evaluate(tmp_path, monkeypatch):
  monkeypatch.delenv("SCORE_SDE_INCEPTION_WEIGHTS", raising=False)  # FID/KID/IS: tests/test_fid_reference.py
  config = tiny_config()
  config.training.n_iters = 4
  config.training.snapshot_freq = 4
  config.training.snapshot_sampling = True
  config.training.snapshot_num_samples = 4
  config.eval.begin_ckpt = config.eval.end_ckpt = 1
  config.eval.num_samples = 6
  config.eval.batch_size = 4
  config.eval.bpd_num_repeats = 1
  config.eval.bpd_rtol = config.eval.bpd_atol = 1e-3
  workdir = str(tmp_path)

  state = train.train(config, workdir)
  assert int(state.step) == 4
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  grid = np.asarray(Image.open(os.path.join(workdir, "samples", "iter_4.png")))
  assert grid.ndim == 2 and grid.std() > 0  # 1-channel grid of 4 samples, not blank
  scalars = logging_utils.read_scalars(os.path.join(workdir, "tensorboard"))
  assert [s for s, _ in scalars["training_loss"]] == [1, 2, 3, 4]
  assert all(math.isfinite(v) for _, v in scalars["training_loss"])

  reports = evaluation.evaluate(config, workdir)
  report = json.load(open(os.path.join(workdir, "eval", "report_4.json")))
  assert reports[4] == report
  assert math.isfinite(report["eval_loss"]) and report["eval_loss"] > 0
  # An untrained model of 8-bit data: dequantized bits/dim are positive and at most a few bits
  # above the 8 bits of a uniform model.
  assert 0 < report["bpd"] < 30
  assert report["fdd"]["num_samples"] == 6
  shards = sorted(os.listdir(os.path.join(workdir, "eval", "ckpt_1")))
  assert shards == ["samples.png", "samples_0.npz", "samples_1.npz", "sampling.json"]

  # A restarted evaluation skips the finished checkpoint.
  assert evaluation.evaluate(config, workdir) == {}

  path = generate.sample(config, workdir)
  assert os.path.exists(path)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
  config = tiny_config()
  config.training.n_iters = 6
  config.training.snapshot_freq_for_preemption = 2
  train.train(config, str(tmp_path))  # a good run to step 6
  config.training.n_iters = 10
  config.optim.lr = float("nan")  # poisons the next update
  with pytest.raises(loop.NonFiniteLossError, match="last good checkpoint is step 6"):
    train.train(config, str(tmp_path))
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints-meta", "6"))


def test_bad_config_values_name_the_field(tmp_path):
  config = tiny_config()
  config.training.sde = "vpsd"
  with pytest.raises(ValueError, match="config.training.sde"):
    train.train(config, str(tmp_path))
  config = tiny_config()
  config.sampling.method = "euler"
  with pytest.raises(ValueError, match="config.sampling.method"):
    builders.build_experiment(config)
  config = tiny_config()
  config.model.name = "unet9000"
  with pytest.raises(ValueError, match="unet9000"):
    train.train(config, str(tmp_path))
