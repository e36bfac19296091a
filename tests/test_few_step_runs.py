"""Consistency models and rectified flow selected by a config, end to end on tiny digits: training,
``--mode reflow_pairs`` with resume, k-rectified flow on the couplings from the previous flow's
parameters, distillation from a trained teacher, and sampling."""
import json
import os

import jax
import numpy as np
import pytest

from score_sde.experiment import builders, cli, restore, train
from tests.helpers.tiny_config import tiny_config

pytestmark = pytest.mark.slow


def _rf_config():
  config = tiny_config()
  config.training.sde = "rectified_flow"
  config.training.loss = "flow_matching"
  config.training.n_iters = 2
  config.sampling.method = "flow"
  config.sampling.num_steps = 2
  config.eval.batch_size = 4
  config.eval.num_samples = 4
  config.reflow.num_pairs = 8
  return config


def _params(config, workdir):
  return restore.latest_params(builders.build_experiment(config), workdir)[1]


def test_rectified_flow_reflow_pairs_and_two_rectified_flow(tmp_path):
  rf_dir, rf2_dir = str(tmp_path / "rf"), str(tmp_path / "rf2")
  config = _rf_config()
  train.train(config, rf_dir)
  grid = cli.MODES["sample"](config, rf_dir)
  assert os.path.basename(os.path.dirname(grid)).startswith("final_2_flow_")

  pairs = cli.MODES["reflow_pairs"](config, rf_dir)
  names = sorted(os.listdir(pairs))
  assert names == ["data_00000.npy", "data_00001.npy", "noise_00000.npy", "noise_00001.npy",
                   "pairs.json"]
  noise, data = np.load(os.path.join(pairs, "noise_00000.npy")), np.load(
      os.path.join(pairs, "data_00000.npy"))
  assert noise.shape == data.shape == (4, 8, 8, 1) and np.all(np.isfinite(data))
  # The ODE is deterministic: the data end of a pair is the flow's decode of its noise end.
  exp = builders.build_experiment(config)
  from score_sde.samplers import ode
  x0, _ = ode.decode(exp.unconditional_model(_params(config, rf_dir)), exp.sde, noise)
  np.testing.assert_allclose(exp.inverse_scaler(np.asarray(x0)), data, atol=1e-4)

  # Resume: complete shards are kept, a missing one is written again; other settings are refused.
  mtime = os.path.getmtime(os.path.join(pairs, "noise_00000.npy"))
  os.remove(os.path.join(pairs, "data_00001.npy"))
  cli.MODES["reflow_pairs"](config, rf_dir)
  assert os.path.getmtime(os.path.join(pairs, "noise_00000.npy")) == mtime
  assert os.path.exists(os.path.join(pairs, "data_00001.npy"))
  changed = _rf_config()
  changed.reflow.num_pairs = 12
  with pytest.raises(ValueError, match="num_pairs"):
    cli.MODES["reflow_pairs"](changed, rf_dir)

  # 2-rectified flow on the couplings, starting from the 1-rectified flow's EMA parameters.
  reflow = _rf_config()
  reflow.data.dataset = "pairs"
  reflow.data.path = pairs
  reflow.training.init_from = rf_dir
  reflow.eval.enable_bpd = False
  reflow.training.n_iters = 0
  start = train.train(reflow, rf2_dir)
  jax.tree.map(np.testing.assert_array_equal, start.params, _params(config, rf_dir))
  reflow.training.n_iters = 2
  reflow.training.time_sampling = "max"  # one-step distillation
  state = train.train(reflow, rf2_dir)
  assert int(state.step) == 2
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


def test_consistency_distillation_from_a_trained_teacher(tmp_path, monkeypatch):
  teacher_dir, student_dir = str(tmp_path / "teacher"), str(tmp_path / "cd")
  teacher = tiny_config()
  teacher.training.n_iters = 2
  train.train(teacher, teacher_dir)
  teacher_file = tmp_path / "teacher_config.py"
  teacher_file.write_text(
      "import sys\nsys.path.insert(0, %r)\nfrom tests.helpers.tiny_config import tiny_config\n"
      "def get_config():\n  c = tiny_config()\n  c.training.n_iters = 2\n  return c\n"
      % os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

  config = tiny_config()
  config.training.loss = "consistency_distillation"
  config.training.n_iters = 3
  config.model.embedding_type = "positional"
  config.consistency.teacher_config = str(teacher_file)
  config.consistency.teacher_workdir = teacher_dir
  config.consistency.num_levels = 6
  config.sampling.method = "consistency"
  config.eval.enable_bpd = False
  config.eval.batch_size = config.eval.num_samples = 4
  state = train.train(config, student_dir)
  assert int(state.step) == 3
  # The target network moved away from the initial parameters at μ = 0.95, apart from the EMA.
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state.target_params,
                       state.ema_params)
  assert max(jax.tree.leaves(moved)) > 0
  for steps in (1, 2):
    config.sampling.num_steps = steps
    grid = cli.MODES["sample"](config, student_dir)
    spec = json.load(open(os.path.join(os.path.dirname(grid), "sampling.json")))
    assert spec["method"] == "consistency" and spec["num_steps"] == steps
    assert spec["sigma_max"] == 80.0  # the trained range, from config.consistency


@pytest.mark.parametrize("objective", ["consistency_training", "improved_consistency_training"])
def test_consistency_training_from_scratch(tmp_path, objective):
  config = tiny_config()
  config.training.loss = objective
  config.training.n_iters = 3
  config.model.embedding_type = "positional"
  config.sampling.method = "consistency"
  config.eval.enable_bpd = False
  state = train.train(config, str(tmp_path))
  assert int(state.step) == 3


def test_consistency_objectives_refuse_a_likelihood_and_a_fourier_embedding():
  config = tiny_config()
  config.training.loss = "improved_consistency_training"
  config.model.embedding_type = "positional"
  with pytest.raises(ValueError, match="enable_bpd=False"):
    builders.check_config(config)
  config.model.embedding_type = "fourier"
  with pytest.raises(ValueError, match="positional"):
    builders.objective(config)
