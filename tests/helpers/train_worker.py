"""Runs a tiny training job in its own process (device count and jax.distributed are per process).

  python -m tests.helpers.train_worker OUT_NPZ WORKDIR N_ITERS [--coordinator HOST:PORT
      --num_processes P --process_id I] [--kill_at STEP --kill_when saving|saved]
      [--sigterm_at STEP] [--dit] [--preemption_freq N] [--snapshot_freq N]

Writes the final parameters and the logged per-step losses to OUT_NPZ (from process 0).
With --kill_at, the process SIGKILLs itself at the save of STEP: right after the writes started
(`saving`) or once they are committed (`saved`), a preemption at a known point. With --sigterm_at,
it sends itself SIGTERM after STEP and exits with the code of `loop.Preempted` (143). With --dit,
the job trains `tiny_dit_config` instead of `tiny_config`.
"""
import argparse
import logging
import os
import signal
import sys

import jax
import numpy as np

from score_sde.experiment import distributed, loop, train
from score_sde.io import checkpointing, logging_utils
from tests.helpers.tiny_config import tiny_config, tiny_dit_config


def _kill_at(step, ckpts, args):
  if step == args.kill_at:
    if args.kill_when == "saved":
      ckpts.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("out")
  parser.add_argument("workdir")
  parser.add_argument("n_iters", type=int)
  parser.add_argument("--coordinator")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--preemption_freq", type=int, default=2)
  parser.add_argument("--snapshot_freq", type=int, default=None)
  parser.add_argument("--kill_at", type=int)
  parser.add_argument("--kill_when", choices=["saving", "saved"], default="saved")
  parser.add_argument("--sigterm_at", type=int)
  parser.add_argument("--dit", action="store_true")
  args = parser.parse_args()
  if args.sigterm_at is not None:
    loop.after_step = lambda step: step == args.sigterm_at and os.kill(os.getpid(), signal.SIGTERM)
  if args.kill_at is not None:
    checkpointing.after_save_started = lambda step, ckpts: _kill_at(step, ckpts, args)
  logging.basicConfig(level=logging.WARNING)
  distributed.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  config = tiny_dit_config() if args.dit else tiny_config()
  config.training.n_iters = args.n_iters
  config.training.snapshot_freq_for_preemption = args.preemption_freq
  if args.snapshot_freq is not None:
    config.training.snapshot_freq = args.snapshot_freq
  try:
    state = train.train(config, args.workdir)
  except loop.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
  params = jax.tree_util.tree_flatten_with_path(state.params)[0]
  # Parameters are replicated: every process holds a full copy.
  flat = {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0)) for k, v in params}
  if jax.process_index() == 0:
    scalars = logging_utils.read_scalars(os.path.join(args.workdir, "tensorboard"))
    np.savez(args.out, losses=np.asarray([v for _, v in scalars["training_loss"]]),
             steps=np.asarray([s for s, _ in scalars["training_loss"]]),
             n_devices=jax.device_count(), **flat)


if __name__ == "__main__":
  main()
