"""Sampler overhead and adaptive-solver cost for a fixed network-shaped score function.

Prints, as a Markdown table, the sampler wall time divided by (NFE x the time of one batched score
evaluation): the overhead of the sampler's own work (noise, updates, loop control; target <= 1.05),
and the NFE and wall time of sample_ode and log_likelihood at rtol = atol = 1e-3 and 1e-5.
Wall times and ratios are medians over --repeats runs after one compiling run; the score
evaluation is timed right before and after each run, so that load from other jobs cancels.

  PYTHONPATH=. python experiments/bench_samplers.py [--image 32 32 3] [--batch 64] [--hidden 1024]
  --quick: 4x4x1 images, batch 4, hidden 32, N = 25 (VP's discrete chain needs N > beta_max = 20), 1 repeat (a smoke test).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from score_sde.samplers import SAMPLERS, likelihood
from score_sde.diffusion import sde as sde_lib


def init_mlp(key, dim: int, hidden: int, n_fourier: int = 64):
  """A 3-layer MLP on flattened images with a Fourier time embedding (a stand-in for a U-Net)."""
  k = jax.random.split(key, 4)
  dense = lambda kk, n_in, n_out: jax.random.normal(kk, (n_in, n_out)) / math.sqrt(n_in)
  return {"freqs": jax.random.normal(k[0], (n_fourier,)) * 16.0,
          "w1": dense(k[1], dim + 2 * n_fourier, hidden), "w2": dense(k[2], hidden, hidden),
          "w3": dense(k[3], hidden, dim) * 0.1}


def mlp_score(params, x, t):
  """score(x [B, H, W, C], t [B]) -> [B, H, W, C]."""
  shape = x.shape
  h = x.reshape(shape[0], -1)
  phase = 2 * jnp.pi * t[:, None] * params["freqs"]
  h = jnp.concatenate([h, jnp.sin(phase), jnp.cos(phase)], axis=-1)
  h = jax.nn.silu(h @ params["w1"])
  h = jax.nn.silu(h @ params["w2"])
  return (h @ params["w3"]).reshape(shape) - x


def timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile
  return statistics.median(timed(fn) for _ in range(repeats))


def overhead(run, nfe: int, score_eval, repeats: int) -> tuple[float, float]:
  """(median wall time, median of wall / (nfe x eval)), eval timed just before and after each run.

  Interleaving keeps the ratio meaningful on a machine shared with other jobs.
  """
  jax.block_until_ready(run())  # compile
  walls, ratios = [], []
  for _ in range(repeats):
    before = statistics.median(timed(score_eval) for _ in range(3))
    wall = timed(run)
    after = statistics.median(timed(score_eval) for _ in range(3))
    walls.append(wall)
    ratios.append(wall / (nfe * 0.5 * (before + after)))
  return statistics.median(walls), statistics.median(ratios)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image", type=int, nargs=3, default=(32, 32, 3))
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=1024)
  parser.add_argument("--steps", type=int, default=100, help="N of the PC samplers")
  parser.add_argument("--ll-batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat")
  args = parser.parse_args()
  if args.quick:
    args.image, args.batch, args.hidden, args.steps, args.ll_batch, args.repeats = (4, 4, 1), 4, 32, 25, 2, 1

  shape = (args.batch, *args.image)
  dim = math.prod(args.image)
  params = init_mlp(jax.random.PRNGKey(0), dim, args.hidden)
  score_fn = Partial(mlp_score, params)
  sde = sde_lib.VPSDE(N=args.steps)
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  t = jnp.full((args.batch,), 0.5)
  eval_fn = jax.jit(mlp_score)
  t_eval = median_time(lambda: eval_fn(params, x, t), 5 * args.repeats)
  print(f"device: {jax.devices()[0].device_kind}; score MLP {dim}-{args.hidden}-{args.hidden}-{dim}; "
        f"batch {args.batch}; one score evaluation {1e3 * t_eval:.2f} ms (median)\n")

  print("| sampler | NFE | wall time (s) | wall / (NFE x eval) |")
  print("|---|---|---|---|")
  runs = [  # (label, name in SAMPLERS, options)
      ("sample_pc reverse_diffusion + langevin", "pc", {}),
      ("sample_pc euler_maruyama, no corrector", "pc", dict(predictor="euler_maruyama", corrector="none")),
      ("sample_pc ancestral_sampling + ald", "pc", dict(predictor="ancestral_sampling", corrector="ald")),
      ("sample_ode tsit5 rtol=1e-3", "ode", dict(rtol=1e-3, atol=1e-3)),
      ("sample_ode tsit5 rtol=1e-5", "ode", dict(rtol=1e-5, atol=1e-5)),
  ]
  score_eval = lambda: eval_fn(params, x, t)
  for label, name, options in runs:
    run = lambda k: SAMPLERS[name](k, score_fn, sde, shape, **options)
    nfe = run(jax.random.PRNGKey(0))[1]["nfe"]
    wall, ratio = overhead(lambda: run(jax.random.PRNGKey(2))[0], nfe, score_eval, args.repeats)
    print(f"| {label} | {nfe} | {wall:.3f} | {ratio:.3f} |")

  xl = x[: args.ll_batch]
  tl = t[: args.ll_batch]
  t_eval_ll = median_time(lambda: eval_fn(params, xl, tl), 5 * args.repeats)
  print(f"\nlog_likelihood (Hutchinson, Rademacher; batch {args.ll_batch}; one score evaluation "
        f"{1e3 * t_eval_ll:.2f} ms)\n")
  print("| rtol = atol | NFE | wall time (s) | wall / (NFE x eval) |")
  print("|---|---|---|---|")
  score_eval = lambda: eval_fn(params, xl, tl)
  for tol in (1e-3, 1e-5):
    run = lambda: likelihood.log_likelihood(jax.random.PRNGKey(0), score_fn, sde, xl, rtol=tol, atol=tol)
    nfe = int(run()[2])
    wall, ratio = overhead(lambda: run()[0], nfe, score_eval, args.repeats)
    print(f"| {tol:g} | {nfe} | {wall:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
  main()
