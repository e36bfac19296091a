"""`--mode fid_stats` and FID/KID/IS in eval mode, with a synthetic pytorch-fid-layout weights file.

The weights are He-initialised random Inception variables written in the published key layout (no
torch): their features mean nothing, but they are well defined, so the run functions can be checked to
compute exactly what the metrics library computes on the same images. Every Inception forward pass in
this file uses one compiled batch shape (`BATCH`, padded batches cost a full one), and few images: the
network runs at 299x299, about a second per image on a busy 2-core CPU.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from score_sde.io import checkpointing, datasets
from score_sde.experiment import builders, evaluation, fid_reference
from score_sde.metrics import convert_inception as ci
from score_sde.metrics import features, fid, inception
from tests.helpers import torch_save
from tests.helpers.tiny_config import tiny_config

# End-to-end runs of the modes with the Inception network: minutes on a CPU.
pytestmark = pytest.mark.slow

BATCH = 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("weights") / "random_inception.pth")
  torch_save.write_inception_weights(path, inception.random_variables(seed=0))
  return path


@pytest.fixture(scope="module")
def weights(weights_file):
  return ci.load_inception_weights(weights_file, expected_sha256=None)  # a test file: any hash


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  """Four 8x8 gray PNGs: the reference data of the eval tests ('folder' has no digits-only FDD)."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for i in range(4):
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
  return str(folder)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A work directory with the untrained tiny model's state as snapshot 0."""
  workdir = str(tmp_path_factory.mktemp("run"))
  ckpts = checkpointing.TrainCheckpoints(workdir)
  ckpts.save(0, builders.build_experiment(tiny_config()).init_state(), snapshot=True)
  ckpts.wait_until_finished()
  ckpts.close()
  return workdir


def _eval_config(image_folder, stats_path):
  config = tiny_config()
  config.data.dataset = "folder"
  config.data.path = image_folder
  config.eval.begin_ckpt = config.eval.end_ckpt = 0
  config.eval.enable_loss = config.eval.enable_bpd = False
  config.eval.num_samples = config.eval.batch_size = config.eval.inception_batch_size = BATCH
  config.eval.fid_stats_path = stats_path
  return config


def test_fid_stats_mode_writes_the_library_statistics_with_provenance(tmp_path, weights):
  config = tiny_config()
  config.eval.fid_stats_num_images = 4  # capped: the first 4 training digits, in dataset order
  config.eval.inception_batch_size = BATCH
  path = fid_reference.fid_stats(config, str(tmp_path), weights)
  assert path == os.path.join(tmp_path, "fid_stats", "digits_train_8_n4.npz")

  images = datasets.digits_split("train", 8)[0][:4]  # uint8 [4, 8, 8, 1]
  expected = features.compute_dataset_stats(images, weights, batch_size=BATCH)
  saved = fid.FeatureStats.load(path)
  np.testing.assert_array_equal(saved.mu, expected.mu)
  np.testing.assert_array_equal(saved.sigma, expected.sigma)
  assert saved.num_images == 4 and saved.weights_sha256 == ci.file_sha256(weights.source)
  assert (saved.feature_space, saved.resize_mode) == (features.FEATURE_SPACE, inception.RESIZE_MODE)
  pool3 = np.load(os.path.join(tmp_path, "fid_stats", "digits_train_8_n4_pool3.npy"))
  # The stored features are the ones the statistics were made of (float32-rounded).
  assert pool3.shape == (4, 2048) and pool3.dtype == np.float32
  np.testing.assert_allclose(pool3.mean(axis=0), saved.mu, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.cov(pool3.astype(np.float64), rowvar=False), saved.sigma, rtol=1e-5, atol=1e-5)
  with open(os.path.join(tmp_path, "fid_stats", "digits_train_8_n4.json")) as f:
    description = json.load(f)
  assert description["dataset"] == "digits" and description["split"] == "train"
  assert (description["image_size"], description["max_images"], description["num_images"]) == (8, 4, 4)
  assert description["weights_sha256"] == saved.weights_sha256
  assert description["weights_file"] == weights.source


def test_eval_reports_fid_kid_is_against_cached_reference(tmp_path, workdir, weights, image_folder,
                                                          monkeypatch):
  stats_path = str(tmp_path / "reference.npz")
  config = _eval_config(image_folder, stats_path)
  reports = evaluation.evaluate(config, workdir, eval_folder="eval_fid", inception_weights=weights)
  with open(os.path.join(workdir, "eval_fid", "report_0.json")) as f:
    report = json.load(f)
  assert reports[0] == report
  assert {"fid", "kid", "inception_score"} <= set(report)
  assert "precision" not in report and "fdd" not in report  # off by default; FDD is digits-only
  for name in ("fid", "kid", "inception_score"):
    assert report[name]["name"] == name
    assert report[name]["num_samples"] == BATCH and report[name]["seed"] == config.seed
    assert report[name]["weights_sha256"] == weights.sha256
    assert report[name]["resize_mode"] == inception.RESIZE_MODE
  assert report["fid"]["num_reference"] == report["kid"]["num_reference"] == 4

  # The reference of the whole folder was computed once and cached with its features (the same code
  # as --mode fid_stats, checked exactly against the library above).
  reference = fid.FeatureStats.load(stats_path)
  assert reference.num_images == 4 and reference.weights_sha256 == weights.sha256
  reference_pool3 = np.load(str(tmp_path / "reference_pool3.npy"))
  np.testing.assert_allclose(reference_pool3.mean(axis=0), reference.mu, rtol=1e-6, atol=1e-6)
  # FID of the saved sample shard against it, computed independently of the run code and of `fid`'s
  # eigendecompositions: two samples x1, x2 have the rank-one covariance v vᵀ with v = (x1 - x2) / √2, so
  # Tr((Σ1^½ Σ2 Σ1^½)^½) = √(vᵀ Σ2 v) and FID = ‖μ1 − μ2‖² + ‖v‖² + Tr Σ2 − 2 √(vᵀ Σ2 v).
  samples = np.load(os.path.join(workdir, "eval_fid", "ckpt_0", "samples_0.npz"))["samples"]
  assert samples.shape == (2, 8, 8, 1) and samples.dtype == np.uint8
  x1, x2 = features.features_from_images(samples, weights, BATCH).pool_3
  v = (x1 - x2) / np.sqrt(2.0)
  mean_gap = (x1 + x2) / 2 - reference.mu
  expected_fid = mean_gap @ mean_gap + v @ v + np.trace(reference.sigma) - 2 * np.sqrt(v @ reference.sigma @ v)
  # `fid` sums √λ over all 2048 eigenvalues of Σ1^½ Σ2 Σ1^½, and the 2047 that are 0 in exact arithmetic
  # come out at rounding level ε λ_max, each adding up to √(ε λ_max): about 1e-7 relative here.
  assert report["fid"]["value"] == pytest.approx(expected_fid, rel=1e-6) and expected_fid > 0

  # A second evaluation loads the cache instead of recomputing it ...
  monkeypatch.setattr(fid_reference, "compute_reference", lambda *args: pytest.fail("recomputed"))
  cached = fid_reference.inception_reference(builders.build_experiment(config), workdir, weights)
  np.testing.assert_array_equal(cached.stats.sigma, reference.sigma)
  np.testing.assert_array_equal(cached.pool3, reference_pool3)
  # ... and refuses it for other weights or other data, naming the file.
  other = ci.InceptionWeights(weights.variables, sha256="0" * 64, source="other.pth")
  with pytest.raises(ValueError, match="weights_sha256.*other.pth"):
    fid_reference.inception_reference(builders.build_experiment(config), workdir, other)
  config.data.image_size = 16
  with pytest.raises(ValueError, match="reference.npz were computed from other data.*image_size"):
    fid_reference.inception_reference(builders.build_experiment(config), workdir, weights)


def test_wrong_weights_file_fails_before_sampling(tmp_path, workdir, image_folder, monkeypatch):
  # The hash is checked before the file is parsed, so any file that is not the published one will do.
  weights_file = str(tmp_path / ci.INCEPTION_WEIGHTS_FILENAME)
  torch_save.write_torch_zip(weights_file, *torch_save.contiguous_entries({"fc.bias": np.zeros(1008, np.float32)}))
  config = _eval_config(image_folder, str(tmp_path / "reference.npz"))
  needed = ("SHA-256 mismatch", weights_file, ci.file_sha256(weights_file), ci.INCEPTION_WEIGHTS_SHA256,
            "--inception_weights", "$SCORE_SDE_INCEPTION_WEIGHTS")
  with pytest.raises(ValueError) as err:
    evaluation.evaluate(config, workdir, eval_folder="eval_bad", inception_weights=weights_file)
  assert all(s in str(err.value) for s in needed), str(err.value)
  assert not os.path.exists(os.path.join(workdir, "eval_bad"))  # nothing sampled or written
  monkeypatch.setenv(ci.INCEPTION_WEIGHTS_ENV, weights_file)  # the same check via the variable
  with pytest.raises(ValueError, match="SHA-256 mismatch"):
    fid_reference.fid_stats(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "reference.npz")
  # Through the command line.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop(ci.INCEPTION_WEIGHTS_ENV)
  proc = subprocess.run(
      [sys.executable, "main.py", "--config", "configs/digits/ddpmpp_vp_small.py", "--workdir",
       str(tmp_path / "cli"), "--mode", "fid_stats", "--inception_weights", weights_file],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "SHA-256 mismatch" in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "cli" / "fid_stats")
  config.eval.fid_stats_num_images = -1
  with pytest.raises(ValueError, match="config.eval.fid_stats_num_images=-1"):
    evaluation.evaluate(config, workdir, eval_folder="eval_bad", inception_weights=weights_file)


def test_without_weights_inception_metrics_are_skipped_with_a_hint(workdir, weights, image_folder,
                                                                  monkeypatch, caplog):
  monkeypatch.delenv(ci.INCEPTION_WEIGHTS_ENV, raising=False)
  config = _eval_config(image_folder, "unused.npz")
  with caplog.at_level(logging.INFO, logger="score_sde.experiment.fid_reference"):
    assert fid_reference.inception_reference(builders.build_experiment(config), workdir, None) is None
  hints = [r.getMessage() for r in caplog.records if "FID/KID/IS skipped" in r.getMessage()]
  assert len(hints) == 1
  for needed in (ci.INCEPTION_WEIGHTS_FILENAME, ci.INCEPTION_WEIGHTS_URL, "--inception_weights",
                 ci.INCEPTION_WEIGHTS_ENV):
    assert needed in hints[0]
  no_samples = np.zeros((2, 8, 8, 1), np.uint8)
  assert evaluation.sample_metrics(builders.build_experiment(config), no_samples) == {}
  config.eval.enable_sampling = False  # no samples to score: weights are not even loaded
  assert fid_reference.inception_reference(builders.build_experiment(config), workdir, weights) is None
