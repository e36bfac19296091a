"""Reflow couplings (Liu et al. 2022, "Flow Straight and Fast", Algorithm 1): (z, x_0) pairs of a
trained flow, written as resumable shards for training the next rectified flow on them.

``--mode reflow_pairs`` draws z from the prior and solves the probability-flow ODE of the newest
checkpoint from z to x_0 (``samplers.ode.decode``, adaptive; ``config.reflow.solver/rtol/atol``).
Shard i is a pure function of the checkpoint, the seed and i, so an interrupted run resumes where it
stopped; ``reflow_pairs/pairs.json`` records what made the shards, and shards of another checkpoint
or setting are refused rather than mixed. A config with ``config.data.dataset = 'pairs'`` and
``config.data.path`` naming the folder trains on them (the flow-matching loss takes each batch's
'noise' as its z): k-rectified flow, or with ``config.training.time_sampling = 'max'`` its
distillation to one step.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from score_sde.experiment import builders
from score_sde.experiment.generate import claim_shard_dir
from score_sde.experiment.restore import latest_params
from score_sde.io import datasets, logging_utils
from score_sde.samplers import common, ode

log = logging.getLogger(__name__)

PAIRS_FOLDER = "reflow_pairs"


def reflow_pairs(config, workdir: str) -> str:
  """Writes config.reflow.num_pairs couplings of the newest checkpoint of ``workdir`` to
  workdir/reflow_pairs in shards of config.eval.batch_size; returns the folder."""
  exp = builders.build_experiment(config)
  exp.require_pixel_space("--mode reflow_pairs")
  step, params = latest_params(exp, workdir)
  r = config.reflow
  options = {"rtol": r.rtol, "atol": r.atol, "solver": r.solver}
  num_pairs, batch = int(r.num_pairs), exp.eval.batch_size
  if num_pairs < 1:
    raise ValueError(f"config.reflow.num_pairs={num_pairs} must be a positive number of pairs.")
  out_dir = os.path.join(workdir, PAIRS_FOLDER)
  claim_shard_dir(out_dir, {"checkpoint_step": step, "num_pairs": num_pairs, "batch_size": batch,
                            "seed": exp.seed, **options},
                  prefixes=datasets.PAIRS_GLOB, spec_name="pairs.json")
  shape = (batch, *exp.image_shape)

  @jax.jit
  def pair(key, params):
    z = common.prior_sample(common.sample_keys(key, batch), exp.sde, shape, common.default_dtype())
    x0, info = ode.decode(exp.unconditional_model(params), exp.sde, z, **options)
    return z, x0, info["nfe"]

  key = jax.random.fold_in(jax.random.fold_in(exp.sample_key, step), 0x2EF1)
  num_shards = -(-num_pairs // batch)
  done = set(datasets.pair_shards(out_dir))
  bar = logging_utils.ProgressBar(total=num_shards, initial=len(done), desc="reflow pairs")
  for i in range(num_shards):
    if i in done:
      continue
    z, x0, nfe = pair(jax.random.fold_in(key, i), params)
    if jax.process_index() == 0:
      datasets.write_pairs(out_dir, i, np.asarray(z), np.asarray(exp.inverse_scaler(x0)))
    bar.update(1, nfe=int(nfe))
  bar.close()
  log.info("%d (noise, data) pairs of step %d in %s", num_shards * batch, step, out_dir)
  return out_dir
