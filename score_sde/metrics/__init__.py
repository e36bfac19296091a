"""Sample-quality metrics: FID, KID, Inception Score, precision/recall, and the offline Fréchet Digits Distance.

Typical use (the FID Inception weights are a local file; see `convert_inception`):

  weights = load_inception_weights(path)                  # checks SHA-256, converts without torch
  ref = compute_dataset_stats(dataset_batches, weights)    # FeatureStats; ref.save('cifar10_stats.npz')
  results = evaluate_inception_metrics(samples_uint8, weights, FeatureStats.load('cifar10_stats.npz'), seed=0)

The modules `inception_score` and `precision_recall` hold the functions of the same name (not re-exported
here, so the submodule names stay importable); `digits_classifier` holds the offline Fréchet Digits Distance.
"""
from score_sde.metrics.convert_inception import (INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILENAME,
                                                 INCEPTION_WEIGHTS_SHA256, INCEPTION_WEIGHTS_URL,
                                                 InceptionWeights, convert_state_dict, load_inception_weights)
from score_sde.metrics.evaluate import MetricResult, evaluate_inception_metrics, metrics_from_inception_features
from score_sde.metrics.features import (InceptionFeatures, compute_dataset_stats, compute_dataset_stats_and_pool3,
                                        features_from_images)
from score_sde.metrics.fid import FeatureStats, StreamingStats, fid_from_stats, frechet_distance, stats_from_features
from score_sde.metrics.inception import InceptionV3FID
from score_sde.metrics.kid import KIDEstimate, kernel_inception_distance
