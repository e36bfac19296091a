"""Inception Score (Salimans et al., 2016): IS = exp(E_x KL(p(y|x) ‖ p(y))), mean and std over splits."""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import log_softmax, logsumexp


@dataclasses.dataclass(frozen=True)
class InceptionScore:
  mean: float
  std: float  # across splits (ddof = 0, as in the original code)
  num_splits: int


def inception_score(logits, num_splits: int = 10) -> InceptionScore:
  """IS from classifier logits [N, K]; p(y) is estimated within each of `num_splits` contiguous splits."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2:
    raise ValueError(f"Need logits [N, K]; got {logits.shape}.")
  if not 1 <= num_splits <= logits.shape[0]:
    raise ValueError(f"num_splits must be in [1, N={logits.shape[0]}]; got {num_splits}.")
  scores = []
  for part in np.array_split(logits, num_splits):
    log_p_yx = log_softmax(part, axis=1)  # [n, K]
    log_p_y = logsumexp(log_p_yx, axis=0) - np.log(part.shape[0])  # [K] log of the split's marginal
    kl = np.sum(np.exp(log_p_yx) * (log_p_yx - log_p_y), axis=1)  # [n]
    scores.append(np.exp(kl.mean()))
  return InceptionScore(mean=float(np.mean(scores)), std=float(np.std(scores)), num_splits=num_splits)
