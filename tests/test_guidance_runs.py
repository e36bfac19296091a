"""Class-guided runs end to end on tiny digits: a CFG model and a noise-conditional classifier."""
import json
import os

import numpy as np
import pytest

from score_sde.metrics import digits_classifier as dc

from score_sde.experiment import builders, evaluation, generate, restore, train
from score_sde.io import datasets
from tests.helpers.tiny_config import tiny_config


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
  state = train.train(config, workdir)
  embedding = state.params["class_embed"]["embedding"]
  assert embedding.shape == (11, 4 * config.model.nf)  # 10 digits + the null class
  assert os.path.exists(os.path.join(workdir, "samples", "iter_2.png"))

  config.eval.begin_ckpt = config.eval.end_ckpt = 1
  report = evaluation.evaluate(config, workdir)[2]
  assert report["class_accuracy"]["num_samples"] == 6
  # The fraction of the stored samples that the digits classifier puts in the class stored with them.
  shards = [np.load(os.path.join(workdir, "eval", "ckpt_1", f"samples_{r}.npz")) for r in (0, 1)]
  samples = np.concatenate([s["samples"] for s in shards])[:6]
  labels = np.concatenate([s["labels"] for s in shards])[:6]
  classifier = dc.train_digits_classifier(seed=0, image_size=8)
  predicted = np.argmax(dc.classify_and_embed(samples, classifier)[0], axis=-1)
  assert report["class_accuracy"]["value"] == np.mean(predicted == labels)
  shard = np.load(os.path.join(workdir, "eval", "ckpt_1", "samples_1.npz"))
  np.testing.assert_array_equal(shard["labels"], [4, 5, 6, 7])  # cycling, continued across shards

  config.sampling.class_label = 3
  grid = generate.sample(config, workdir)
  shard = np.load(os.path.join(os.path.dirname(grid), "samples_0.npz"))
  np.testing.assert_array_equal(shard["labels"], 3)


def test_classifier_trains_resumes_and_guides_sampling(tmp_path):
  config = _small(tiny_config())
  config.classifier.update(depth=10, widen_factor=1, n_iters=3, batch_size=8, log_freq=1,
                           eval_freq=3, snapshot_freq=2, warmup=1)
  workdir = str(tmp_path)
  state, report = train.train_classifier(config, workdir)
  assert int(state.step) == 3
  assert set(report) == {f"accuracy_t{t:g}" for t in train.CLASSIFIER_EVAL_TIMES}
  saved = json.load(open(os.path.join(workdir, "classifier", "accuracy_3.json")))
  assert saved == {"step": 3, **report}
  # Fractions of the test split's images, one noise draw each.
  n_test = len(datasets.digits_split("test", 8)[1])
  assert all(abs(v * n_test - round(v * n_test)) < 1e-6 for v in report.values())
  config.classifier.n_iters = 4  # resumes from step 3
  state, _ = train.train_classifier(config, workdir)
  assert int(state.step) == 4

  exp = builders.build_experiment(config)
  step, params = restore.load_classifier_params(exp, workdir)
  assert step == 4
  logits = exp.classifier_module.apply({"params": params}, np.zeros((2, 8, 8, 1), np.float32),
                                       np.ones((2,), np.float32))
  assert logits.shape == (2, 10)

  train.train(config, workdir)  # a score model for the same workdir
  config.sampling.guidance = "classifier"
  config.sampling.guidance_scale = 3.0
  path = generate.sample(config, workdir)
  shard = np.load(os.path.join(os.path.dirname(path), "samples_0.npz"))
  assert shard["samples"].shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(shard["labels"], [0, 1, 2, 3])


def test_guidance_config_errors(tmp_path):
  config = tiny_config()
  config.sampling.guidance = "cfg"
  with pytest.raises(ValueError, match="class-conditional model"):
    builders.get_guidance(config)
  config.sampling.guidance = "sharpen"
  with pytest.raises(ValueError, match="config.sampling.guidance"):
    builders.get_guidance(config)
  config.sampling.guidance = "classifier"
  config.sampling.class_label = 12
  with pytest.raises(ValueError, match="class_label=12"):
    builders.get_guidance(config)
  config.sampling.class_label = -1
  exp = builders.build_experiment(config)
  with pytest.raises(FileNotFoundError, match="train_classifier"):
    restore.guidance_classifier_params(exp, str(tmp_path))
  with pytest.raises(ValueError, match="train_classifier"):  # sampling without the classifier
    exp.generate(exp.sample_key, None, 4)


def test_guidance_labels_cycle_or_fix_the_class():
  config = tiny_config()
  config.sampling.guidance = "classifier"
  guidance = builders.get_guidance(config)
  np.testing.assert_array_equal(guidance.labels(4, offset=8), [8, 9, 0, 1])
  config.sampling.class_label = 3
  np.testing.assert_array_equal(builders.get_guidance(config).labels(2), [3, 3])
  config.sampling.guidance = "none"
  assert builders.get_guidance(config).labels(2) is None


def test_class_accuracy_of_real_digits_with_right_and_wrong_labels():
  config = tiny_config()
  config.sampling.guidance = "classifier"
  exp = builders.build_experiment(config)
  images, labels = datasets.digits_split("test", 8)  # uint8 [297, 8, 8, 1]
  right = evaluation.sample_metrics(exp, images[:100], labels=labels[:100])["class_accuracy"]
  wrong = evaluation.sample_metrics(exp, images[:100], labels=(labels[:100] + 1) % 10)
  assert right["value"] > 0.8 and wrong["class_accuracy"]["value"] < 0.2
  assert (right["num_samples"], right["guidance"], right["guidance_scale"]) == (100, "classifier", 1.0)
  assert "class_accuracy" not in evaluation.sample_metrics(exp, images[:4])  # unguided: no labels
