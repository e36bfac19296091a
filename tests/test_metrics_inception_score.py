"""Inception Score on synthetic logits with known answers."""
import numpy as np
import pytest

from score_sde.metrics import inception_score as is_lib


def _confident_logits(labels, num_classes, margin=60.0):
  return margin * np.eye(num_classes)[labels]  # softmax is one-hot up to (K-1) e^-60


def test_confident_predictions_with_uniform_marginal_give_num_classes():
  k = 10
  logits = _confident_logits(np.tile(np.arange(k), 20), k)  # 200 samples, every split of 20 is balanced
  score = is_lib.inception_score(logits, num_splits=10)
  np.testing.assert_allclose(score.mean, k, rtol=1e-10)
  assert score.std == pytest.approx(0.0, abs=1e-9)


def test_identical_predictions_give_one():
  rng = np.random.default_rng(0)
  logits = np.tile(rng.normal(size=(1, 7)), (30, 1))
  score = is_lib.inception_score(logits, num_splits=3)
  np.testing.assert_allclose([score.mean, score.std], [1.0, 0.0], atol=1e-12)


def test_two_class_uncertainty_halves_the_score():
  # Each sample is uniform over a pair of classes ({0,1} or {2,3}); marginal uniform over 4:
  # KL = log(4/2) for every sample, so IS = 2.
  logits = np.full((8, 4), -np.inf)
  logits[0::2, :2] = 0.0
  logits[1::2, 2:] = 0.0
  logits = np.where(np.isinf(logits), -80.0, logits)
  np.testing.assert_allclose(is_lib.inception_score(logits, num_splits=2).mean, 2.0, rtol=1e-10)


def test_matches_direct_numpy_formula_and_split_std():
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=3.0, size=(60, 5))
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  per_split = []
  for part in np.split(p, 3):
    marginal = part.mean(0)
    per_split.append(np.exp(np.mean(np.sum(part * np.log(part / marginal), axis=1))))
  score = is_lib.inception_score(logits, num_splits=3)
  np.testing.assert_allclose([score.mean, score.std], [np.mean(per_split), np.std(per_split)], rtol=1e-10)
  # Splits with IS 1 and IS K: mean (1 + K) / 2, std (K - 1) / 2.
  k = 6
  mixed = np.concatenate([np.zeros((k, k)), _confident_logits(np.arange(k), k)])
  score = is_lib.inception_score(mixed, num_splits=2)
  np.testing.assert_allclose([score.mean, score.std], [(1 + k) / 2, (k - 1) / 2], rtol=1e-10)


def test_bad_inputs_are_rejected():
  with pytest.raises(ValueError, match="num_splits"):
    is_lib.inception_score(np.zeros((3, 4)), num_splits=5)
  with pytest.raises(ValueError, match=r"\[N, K\]"):
    is_lib.inception_score(np.zeros(4))
