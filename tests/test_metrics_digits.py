"""The offline Fréchet Digits Distance: classifier accuracy, determinism, and FDD separating real from fake."""
import numpy as np
import pytest

from score_sde.metrics import digits_classifier as dc


@pytest.fixture(scope="module")
def classifier():
  return dc.train_digits_classifier(seed=0)


@pytest.fixture(scope="module")
def splits():
  return dc.train_test_split(*dc.load_digits_images(16))


def test_digits_loading_and_split():
  images, labels = dc.load_digits_images(16)
  assert images.shape == (1797, 16, 16, 1) and images.dtype == np.float32
  assert images.min() >= 0.0 and images.max() <= 1.0 and images.max() > 0.9
  assert set(np.unique(labels)) == set(range(10))
  (x_tr, y_tr), (x_te, y_te) = dc.train_test_split(images, labels)
  assert x_tr.shape[0] + x_te.shape[0] == 1797 and x_te.shape[0] == 359
  (x_tr2, _), _ = dc.train_test_split(images, labels)
  np.testing.assert_array_equal(x_tr, x_tr2)


def test_classifier_accuracy(classifier, splits):
  _, (x_te, y_te) = splits
  logits, feats = dc.classify_and_embed(x_te, classifier)
  assert feats.shape == (x_te.shape[0], dc.FEATURE_DIM)
  assert np.mean(logits.argmax(1) == y_te) > 0.9


def test_fdd_small_between_splits_large_for_noise_and_missing_classes(classifier, splits):
  (x_tr, _), (x_te, y_te) = splits
  real = dc.frechet_digits_distance(x_te, x_tr, classifier, seed=3)
  noise = np.random.default_rng(0).uniform(size=x_te.shape).astype(np.float32)
  fake = dc.frechet_digits_distance(noise, x_tr, classifier)
  half = dc.frechet_digits_distance(x_te[y_te < 5], x_tr, classifier)  # mode dropping: digits 5-9 missing
  assert real.value < 0.1 * half.value < 0.1 * fake.value, (real.value, half.value, fake.value)
  assert (real.num_samples, real.num_reference, real.seed) == (x_te.shape[0], x_tr.shape[0], 3)
  assert real.weights_sha256 == classifier.sha256 and real.feature_space == dc.FEATURE_SPACE
  # uint8 and 32x32 inputs are accepted (resized to the classifier's 16x16) and give similar values.
  x_te_32 = np.repeat(np.repeat(x_te, 2, axis=1), 2, axis=2)
  up = dc.frechet_digits_distance((x_te_32 * 255).round().astype(np.uint8), dc.digits_stats(x_tr, classifier),
                                  classifier)
  assert up.value < 0.1 * half.value


def test_training_is_deterministic_and_roundtrips(tmp_path):
  a = dc.train_digits_classifier(seed=1, num_steps=3)
  b = dc.train_digits_classifier(seed=1, num_steps=3)
  c = dc.train_digits_classifier(seed=2, num_steps=3)
  assert a.sha256 == b.sha256 != c.sha256
  path = str(tmp_path / "digits_cnn.msgpack")
  dc.save_digits_classifier(path, a)
  loaded = dc.load_digits_classifier(path)
  assert loaded.sha256 == a.sha256 and loaded.image_size == 16


def test_bad_images_are_rejected(classifier):
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    dc.classify_and_embed(np.full((2, 16, 16, 1), -1.0, np.float32), classifier)
