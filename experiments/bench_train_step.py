"""Times one training step of a config, comparing the unrolled n_jitted_steps loop with lax.scan.

  python experiments/bench_train_step.py --config configs/digits/ddpmpp_vp_small.py --k 2
  --cpu_devices 2: the CPU as two devices, the batch split over them (as main.py --cpu_devices).
  --quick: the config shrunk to a one-level nf 8 model on 8x8 images, batch 4, 1 repeat (a smoke test).

On XLA:CPU the backward convolutions run much slower inside a while-loop body, which is why
``training.make_train_step`` unrolls its n_jitted_steps loop. Prints medians over repeats.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from score_sde.experiment import builders, config_files, distributed, training


def _median_seconds(fn, args, repeats):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/digits/ddpmpp_vp_small.py")
  parser.add_argument("--k", type=int, default=2, help="optimiser steps per jitted call")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true", help="a tiny model, batch 4, 1 repeat")
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="run the CPU backend as this many devices, the batch split over them")
  args = parser.parse_args()
  if args.cpu_devices:
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  config = config_files.load_config_file(args.config, "--config")
  if args.quick:
    args.repeats = 1
    config.data.image_size, config.training.batch_size = 8, 4
    config.model.nf, config.model.ch_mult, config.model.attn_resolutions = 8, (1,), ()
  exp = builders.build_experiment(config)
  state = exp.init_state()
  batches = {"image": jax.device_put(jnp.zeros((args.k, exp.training.batch_size, *exp.image_shape)),
                                     distributed.batch_sharding(exp.mesh, 1))}
  unrolled = training.make_train_step(exp.train_loss, exp.optimizer, exp.training.ema_rate,
                                      exp.training.ema_warmup)

  def scanned(state, batches, key):
    one = lambda s, b: unrolled(s, jax.tree.map(lambda v: v[None], b), key)
    state, metrics = jax.lax.scan(one, state, batches)
    return state, metrics

  t_unrolled = _median_seconds(unrolled, (state, batches, exp.train_key), args.repeats) / args.k
  t_scan = _median_seconds(scanned, (state, batches, exp.train_key), args.repeats) / args.k
  print(f"{jax.device_count()} {jax.default_backend()} device(s), per optimiser step: "
        f"unrolled {t_unrolled * 1e3:.1f} ms, lax.scan {t_scan * 1e3:.1f} ms, "
        f"ratio scan/unrolled {t_scan / t_unrolled:.2f}")


if __name__ == "__main__":
  main()
