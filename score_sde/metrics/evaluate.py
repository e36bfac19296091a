"""Sample-quality metrics with their provenance: every number carries sample count, seed, resize mode
and the feature network's weights hash, so results from different setups are never compared by mistake."""
from __future__ import annotations

import dataclasses

import numpy as np

from score_sde.metrics import features as features_lib
from score_sde.metrics import fid, inception, inception_score, kid, precision_recall
from score_sde.metrics.convert_inception import InceptionWeights


@dataclasses.dataclass(frozen=True)
class MetricResult:
  name: str  # 'fid', 'kid', 'inception_score', 'precision', 'recall', 'fdd'
  value: float
  std: float | None  # spread where the metric defines one (IS over splits, KID over subsets)
  num_samples: int
  num_reference: int
  seed: int | None  # seed of the samples being scored (and of KID's subset draws)
  resize_mode: str
  weights_sha256: str
  feature_space: str

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def evaluate_inception_metrics(sample_images, weights: InceptionWeights, reference_stats: fid.FeatureStats,
                               reference_pool3: np.ndarray | None = None, seed: int | None = None,
                               batch_size: int = 50, **metric_options) -> dict[str, MetricResult]:
  """Inception features of NHWC samples (uint8 or [0, 1] floats), then `metrics_from_inception_features`."""
  feats = features_lib.features_from_images(sample_images, weights, batch_size)
  return metrics_from_inception_features(feats, weights.sha256, reference_stats, reference_pool3, seed,
                                         **metric_options)


def metrics_from_inception_features(feats: features_lib.InceptionFeatures, weights_sha256: str,
                                    reference_stats: fid.FeatureStats, reference_pool3: np.ndarray | None = None,
                                    seed: int | None = None, is_splits: int = 10, kid_subsets: int = 100,
                                    kid_subset_size: int = 1000, pr_k: int | None = 3) -> dict[str, MetricResult]:
  """FID and IS of sample features; KID and precision/recall too when reference pool_3 features are given.

  `pr_k` is the k of the precision/recall k-NN manifolds; None skips them (they cost O(N M) distances).
  """
  sample_stats = fid.stats_from_features(
      feats.pool_3, feature_space=features_lib.FEATURE_SPACE, resize_mode=inception.RESIZE_MODE,
      weights_sha256=weights_sha256)
  n = feats.pool_3.shape[0]
  common = dict(num_samples=n, seed=seed, resize_mode=inception.RESIZE_MODE, weights_sha256=weights_sha256,
                feature_space=features_lib.FEATURE_SPACE)
  results = {
      "fid": MetricResult("fid", fid.fid_from_stats(sample_stats, reference_stats), None,
                          num_reference=reference_stats.num_images, **common)}
  score = inception_score.inception_score(feats.logits, num_splits=min(is_splits, n))
  results["inception_score"] = MetricResult("inception_score", score.mean, score.std, num_reference=0, **common)
  if reference_pool3 is not None:
    ref = np.asarray(reference_pool3)
    estimate = kid.kernel_inception_distance(feats.pool_3, ref, kid_subsets, kid_subset_size,
                                             seed=0 if seed is None else seed)
    results["kid"] = MetricResult("kid", estimate.mean, estimate.std_error, num_reference=ref.shape[0], **common)
    if pr_k is not None:
      pr = precision_recall.precision_recall(ref, feats.pool_3, k=pr_k)
      results["precision"] = MetricResult("precision", pr.precision, None, num_reference=ref.shape[0], **common)
      results["recall"] = MetricResult("recall", pr.recall, None, num_reference=ref.shape[0], **common)
  return results
