"""Fréchet Digits Distance (FDD): the FID formula in the feature space of a small digits classifier.

FID needs Inception weights trained on ImageNet; for the built-in scikit-learn digits (1797 8x8 gray
images, offline) the project trains its own CNN classifier in seconds and measures the Fréchet distance
between Gaussian fits of its penultimate (64-d) features. Same formula as FID (`fid.frechet_distance`),
a different feature space: FDD numbers are not comparable to FID numbers, only to other FDD numbers
from the same classifier weights (whose hash every result records).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde.metrics import fid
from score_sde.metrics.evaluate import MetricResult

NUM_CLASSES = 10
FEATURE_DIM = 64
FEATURE_SPACE = "digits_cnn_penultimate64"


def load_digits_images(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as float32 [1797, S, S, 1] in [0, 1] (bilinear upscaling of 8x8) and labels [1797]."""
  from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
  data = load_digits()
  images = (data.images / 16.0).astype(np.float32)[..., None]  # [N, 8, 8, 1]; pixel values are 0..16
  if image_size != 8:
    images = np.asarray(jax.image.resize(images, (images.shape[0], image_size, image_size, 1), "bilinear"))
  return np.clip(images, 0.0, 1.0), data.target.astype(np.int32)


def train_test_split(images: np.ndarray, labels: np.ndarray, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Deterministic random split -> ((train_images, train_labels), (test_images, test_labels))."""
  perm = np.random.default_rng(seed).permutation(images.shape[0])
  n_test = int(round(test_fraction * images.shape[0]))
  test, train = perm[:n_test], perm[n_test:]
  return (images[train], labels[train]), (images[test], labels[test])


class DigitsCNN(nn.Module):
  """Two conv layers, a 64-unit penultimate layer (the FDD feature space) and 10 logits."""

  @nn.compact
  def __call__(self, x):  # [B, S, S, 1]
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))  # [B, S/2, S/2, 16]
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))  # [B, S/4, S/4, 32]
    features = nn.relu(nn.Dense(FEATURE_DIM)(x.reshape(x.shape[0], -1)))  # [B, 64]
    return nn.Dense(NUM_CLASSES)(features), features


@dataclasses.dataclass(frozen=True)
class DigitsClassifier:
  params: dict
  image_size: int

  @property
  def sha256(self) -> str:
    """Hash of the serialised parameters: identifies the feature space of an FDD number."""
    return hashlib.sha256(flax.serialization.to_bytes(self.params)).hexdigest()

  @property
  def resize_mode(self) -> str:
    return f"bilinear_antialias_to_{self.image_size}"


def _to_gray_unit(images, image_size: int) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Expected [N, H, W] or NHWC images with 1 or 3 channels; got {images.shape}.")
  images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
  lo, hi = float(images.min()), float(images.max())
  if lo < -1e-3 or hi > 1 + 1e-3:
    raise ValueError(f"Float images must lie in [0, 1]; got range [{lo:.3g}, {hi:.3g}]. "
                     "Map centred data with (x + 1) / 2, or pass uint8.")
  images = np.clip(images.mean(axis=-1, keepdims=True), 0.0, 1.0)
  if images.shape[1:3] != (image_size, image_size):
    images = np.asarray(jax.image.resize(images, (images.shape[0], image_size, image_size, 1), "bilinear"))
  return images


def _loss(params, images, labels):
  logits, _ = DigitsCNN().apply({"params": params}, images)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, static_argnames=("batch_size", "learning_rate"))
def _train_step(params, opt_state, key, images, labels, batch_size, learning_rate):
  idx = jax.random.choice(key, images.shape[0], (batch_size,), replace=False)
  grads = jax.grad(_loss)(params, images[idx], labels[idx])
  updates, opt_state = optax.adam(learning_rate).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


@functools.lru_cache(maxsize=4)
def train_digits_classifier(seed: int = 0, image_size: int = 16, num_steps: int = 200, batch_size: int = 64,
                            learning_rate: float = 3e-3) -> DigitsClassifier:
  """Trains `DigitsCNN` on the training split of the digits with Adam (a few seconds on CPU).

  Deterministic given `seed` (initialisation and minibatch order) on a given backend, so the result
  is cached per process: an evaluation that scores many checkpoints trains it once.
  """
  (x_train, y_train), _ = train_test_split(*load_digits_images(image_size))
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  params = DigitsCNN().init(init_key, jnp.zeros((1, image_size, image_size, 1)))["params"]
  opt_state = optax.adam(learning_rate).init(params)
  x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
  # A Python loop around one compiled step: XLA:CPU runs these convolutions far slower inside lax.scan.
  for key in jax.random.split(data_key, num_steps):
    params, opt_state = _train_step(params, opt_state, key, x_train, y_train, batch_size, learning_rate)
  return DigitsClassifier(params=jax.device_get(params), image_size=image_size)


def save_digits_classifier(path: str, classifier: DigitsClassifier) -> None:
  with open(path, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(
        {"params": jax.tree.map(np.asarray, classifier.params), "image_size": classifier.image_size}))


def load_digits_classifier(path: str) -> DigitsClassifier:
  with open(path, "rb") as f:
    state = flax.serialization.msgpack_restore(f.read())
  return DigitsClassifier(params=state["params"], image_size=int(state["image_size"]))


@jax.jit
def _apply(params, images):
  return DigitsCNN().apply({"params": params}, images)


def classify_and_embed(images, classifier: DigitsClassifier, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """(logits [N, 10], penultimate features [N, 64]) for digit images in [0, 1] or uint8."""
  images = _to_gray_unit(images, classifier.image_size)
  logits, feats = [], []
  for start in range(0, images.shape[0], batch_size):
    out_logits, out_feats = _apply(classifier.params, images[start:start + batch_size])
    logits.append(np.asarray(out_logits, np.float64))
    feats.append(np.asarray(out_feats, np.float64))
  return np.concatenate(logits), np.concatenate(feats)


def digits_stats(images, classifier: DigitsClassifier) -> fid.FeatureStats:
  """Gaussian fit of the classifier's penultimate features, with provenance."""
  _, feats = classify_and_embed(images, classifier)
  return fid.stats_from_features(feats, feature_space=FEATURE_SPACE, resize_mode=classifier.resize_mode,
                                 weights_sha256=classifier.sha256)


def frechet_digits_distance(sample_images, reference: np.ndarray | fid.FeatureStats,
                            classifier: DigitsClassifier, seed: int | None = None) -> MetricResult:
  """FDD between samples and reference images (or their precomputed `digits_stats`)."""
  sample_stats = digits_stats(sample_images, classifier)
  ref_stats = reference if isinstance(reference, fid.FeatureStats) else digits_stats(reference, classifier)
  return MetricResult(name="fdd", value=fid.fid_from_stats(sample_stats, ref_stats), std=None,
                      num_samples=sample_stats.num_images, num_reference=ref_stats.num_images, seed=seed,
                      resize_mode=classifier.resize_mode, weights_sha256=classifier.sha256,
                      feature_space=FEATURE_SPACE)
