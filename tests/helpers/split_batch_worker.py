"""Samples a batch and solves its bits/dim with the tiny config in its own process (the device count
is per process), and records the per-device FLOP of both compiled functions.

  python -m tests.helpers.split_batch_worker OUT_NPZ
"""
import sys

import jax
import numpy as np

from score_sde.experiment import builders, evaluation
from tests.helpers.tiny_config import tiny_config


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def main(out: str) -> None:
  config = tiny_config()
  config.eval.bpd_rtol = config.eval.bpd_atol = 1e-3
  exp = builders.build_experiment(config)
  params = exp.init_state().params
  key = jax.random.PRNGKey(3)
  batch = 8
  samples, _ = exp.sampler(key, params, batch)
  images = exp.test_images(0, batch)
  bpd_fn = evaluation._bpd_function(exp)  # pylint: disable=protected-access
  bpd = bpd_fn(params, key, images)
  np.savez(out, samples=np.asarray(samples), bpd=np.asarray(bpd), devices=jax.device_count(),
           sampler_flops=_flops(exp.sampler.lower(key, params, batch).compile()),
           bpd_flops=_flops(bpd_fn.lower(params, key, images).compile()),
           replicated=samples.sharding.is_fully_replicated and bpd.sharding.is_fully_replicated)


if __name__ == "__main__":
  main(sys.argv[1])
