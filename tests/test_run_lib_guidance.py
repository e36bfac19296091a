"""Class-guided runs end to end on tiny digits: a CFG model and a noise-conditional classifier."""
import json
import os

import numpy as np
import pytest

from score_sde.experiment import config_utils, run_lib
from tests.helpers.tiny_config import tiny_config

# End-to-end training and guided sampling: minutes on a CPU.
pytestmark = pytest.mark.slow


def _small(config):
  config.model.num_scales = 10
  config.training.n_iters = 2
  config.training.snapshot_freq = 2
  config.eval.num_samples = 6
  config.eval.batch_size = 4
  return config


def test_cfg_model_trains_samples_and_evaluates_with_class_labels(tmp_path, monkeypatch):
  monkeypatch.delenv("SCORE_SDE_INCEPTION_WEIGHTS", raising=False)
  config = _small(tiny_config())
  config.model.num_classes = 10
  config.sampling.guidance = "cfg"
  config.sampling.guidance_scale = 2.0
  config.training.snapshot_sampling = True
  config.training.snapshot_num_samples = 4
  config.eval.enable_bpd = False
  workdir = str(tmp_path)
  state = run_lib.train(config, workdir)
  embedding = state.params["class_embed"]["embedding"]
  assert embedding.shape == (11, 4 * config.model.nf)  # 10 digits + the null class
  assert os.path.exists(os.path.join(workdir, "samples", "iter_2.png"))

  config.eval.begin_ckpt = config.eval.end_ckpt = 1
  report = run_lib.evaluate(config, workdir)[2]
  assert 0.0 <= report["class_accuracy"]["value"] <= 1.0
  assert report["class_accuracy"]["num_samples"] == 6
  shard = np.load(os.path.join(workdir, "eval", "ckpt_1", "samples_1.npz"))
  np.testing.assert_array_equal(shard["labels"], [4, 5, 6, 7])  # cycling, continued across shards

  config.sampling.class_label = 3
  run_lib.sample(config, workdir)
  shard = np.load(os.path.join(workdir, "samples", "final_2", "samples_0.npz"))
  np.testing.assert_array_equal(shard["labels"], 3)


def test_classifier_trains_resumes_and_guides_sampling(tmp_path):
  config = _small(tiny_config())
  config.classifier.update(depth=10, widen_factor=1, n_iters=3, batch_size=8, log_freq=1,
                           eval_freq=3, snapshot_freq=2, warmup=1)
  workdir = str(tmp_path)
  state, report = run_lib.train_classifier(config, workdir)
  assert int(state.step) == 3
  assert set(report) == {f"accuracy_t{t:g}" for t in run_lib.CLASSIFIER_EVAL_TIMES}
  saved = json.load(open(os.path.join(workdir, "classifier", "accuracy_3.json")))
  assert saved["step"] == 3 and all(0 <= saved[k] <= 1 for k in report)
  config.classifier.n_iters = 4  # resumes from step 3
  state, _ = run_lib.train_classifier(config, workdir)
  assert int(state.step) == 4

  exp = run_lib.Experiment(config)
  step, params = run_lib.load_classifier_params(exp, workdir)
  assert step == 4
  logits = exp.classifier_module.apply({"params": params}, np.zeros((2, 8, 8, 1), np.float32),
                                       np.ones((2,), np.float32))
  assert logits.shape == (2, 10)

  run_lib.train(config, workdir)  # a score model for the same workdir
  config.sampling.guidance = "classifier"
  config.sampling.guidance_scale = 3.0
  path = run_lib.sample(config, workdir)
  shard = np.load(os.path.join(os.path.dirname(path), "samples_0.npz"))
  assert shard["samples"].shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(shard["labels"], [0, 1, 2, 3])


def test_guidance_config_errors(tmp_path):
  config = tiny_config()
  config.sampling.guidance = "cfg"
  with pytest.raises(ValueError, match="class-conditional model"):
    config_utils.sample_labels(config, 4)
  config.sampling.guidance = "sharpen"
  with pytest.raises(ValueError, match="config.sampling.guidance"):
    config_utils.sample_labels(config, 4)
  config.sampling.guidance = "classifier"
  config.sampling.class_label = 12
  with pytest.raises(ValueError, match="class_label=12"):
    config_utils.sample_labels(config, 4)
  config.sampling.class_label = -1
  with pytest.raises(FileNotFoundError, match="train_classifier"):
    run_lib.Experiment(config).load_classifier(str(tmp_path))
