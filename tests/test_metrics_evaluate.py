"""`metrics_from_inception_features`: each metric equals its module's value and carries provenance."""
import numpy as np
import pytest

from score_sde.metrics import evaluate, features, fid, inception, inception_score, kid, precision_recall


def _synthetic_features(seed, n, shift=0.0):
  rng = np.random.default_rng(seed)
  return features.InceptionFeatures(pool_3=rng.normal(shift, 1.0, size=(n, 8)), logits=rng.normal(size=(n, 5)))


def test_results_match_metric_modules_and_record_provenance():
  samples, reference = _synthetic_features(0, 40, shift=0.5), _synthetic_features(1, 50)
  ref_stats = fid.stats_from_features(reference.pool_3, feature_space=features.FEATURE_SPACE,
                                      resize_mode=inception.RESIZE_MODE, weights_sha256="w")
  results = evaluate.metrics_from_inception_features(samples, "w", ref_stats, reference.pool_3, seed=7,
                                                     is_splits=4, kid_subsets=5, kid_subset_size=20, pr_k=3)
  expected_fid = fid.frechet_distance(samples.pool_3.mean(0), np.cov(samples.pool_3, rowvar=False),
                                      ref_stats.mu, ref_stats.sigma)
  score = inception_score.inception_score(samples.logits, num_splits=4)
  estimate = kid.kernel_inception_distance(samples.pool_3, reference.pool_3, 5, 20, seed=7)
  pr = precision_recall.precision_recall(reference.pool_3, samples.pool_3, k=3)
  assert results["fid"].value == pytest.approx(expected_fid, rel=1e-12) and expected_fid > 1.0
  assert (results["inception_score"].value, results["inception_score"].std) == (score.mean, score.std)
  assert (results["kid"].value, results["kid"].std) == (estimate.mean, estimate.std_error)
  assert (results["precision"].value, results["recall"].value) == (pr.precision, pr.recall)
  for result in results.values():
    record = result.as_dict()
    assert (record["num_samples"], record["seed"], record["weights_sha256"]) == (40, 7, "w")
    assert record["resize_mode"] == inception.RESIZE_MODE and record["feature_space"] == features.FEATURE_SPACE
  assert results["fid"].num_reference == 50
  without_pr = evaluate.metrics_from_inception_features(samples, "w", ref_stats, reference.pool_3, seed=7,
                                                        is_splits=4, kid_subsets=5, kid_subset_size=20, pr_k=None)
  assert set(without_pr) == {"fid", "inception_score", "kid"}
  assert without_pr["kid"].value == results["kid"].value


def test_reference_from_other_weights_is_refused():
  samples, reference = _synthetic_features(2, 10), _synthetic_features(3, 10)
  ref_stats = fid.stats_from_features(reference.pool_3, weights_sha256="other-weights")
  with pytest.raises(ValueError, match="weights_sha256"):
    evaluate.metrics_from_inception_features(samples, "w", ref_stats)
  without_pool3 = evaluate.metrics_from_inception_features(samples, "other-weights", ref_stats)
  assert set(without_pool3) == {"fid", "inception_score"}
