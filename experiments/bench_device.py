"""What this codebase achieves on the device present (CPU, GPU or TPU), as one short script.

  PYTHONPATH=. python experiments/bench_device.py                          # a GPU/TPU machine
  PYTHONPATH=. python experiments/bench_device.py --quick                  # a smoke test on CPU
  PYTHONPATH=. python experiments/bench_device.py --compute_dtype bfloat16 --remat  # the options

Prints, for the tiny NCSN++ of issue 15 (nf 32, ch_mult (1, 2), one res block, attention at 16,
32x32x3, continuous VE) and for --config (default: CIFAR-10 DDPM++ continuous, the reference size):
* the device and its measured matmul peak (a 4096² float32 and, off CPU, bfloat16 GEMM);
* the train step (fwd + bwd + Adam) at each --batch_sizes: ms per step, FLOP per step from XLA's
  cost analysis of the compiled step, and the model FLOP utilisation MFU = achieved / measured peak
  (float32 peak; the bf16 peak beside it);
* the PC sampler's throughput (Euler-Maruyama, 100 steps): samples per second;
* the likelihood of 8 images at rtol = atol = 1e-5 (Dopri5): NFE and seconds.
--compute_dtype and --remat set config.model.compute_dtype and config.model.remat (the accelerator
options, docs/performance.md) for both models. Figures go to stdout and, with --out, to a JSON file; docs/performance.md records them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from score_sde.experiment import builders, config_files, training
from score_sde.samplers import likelihood

TINY = dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


def median_seconds(fn, repeats: int) -> float:
  """Median seconds of ``repeats`` runs of ``fn`` after a warm-up (compiling) run."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak(n: int, dtype, repeats: int) -> float:
  """FLOP/s of an n x n x n matmul in ``dtype`` (2 n³ FLOP), the measured peak of the device."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / median_seconds(lambda: f(a), repeats)


def load(config_file: str, quick: bool, tiny: bool, compute_dtype: str, remat: bool):
  config = config_files.load_config_file(config_file, "--config")
  config.model.update(compute_dtype=compute_dtype, remat=remat)
  if tiny:
    config.model.update(TINY)
    config.data.update(image_size=32, num_channels=3)
  if quick:
    config.model.update(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=())
    config.data.image_size = 8
    config.model.num_scales = 10
  config.data.dataset = "digits"  # the timings never read data; digits needs no download
  return config


def train_step_figures(config, batch_size: int, repeats: int) -> dict:
  config.training.batch_size = batch_size
  exp = builders.build_experiment(config)
  step = jax.jit(training.make_train_step(exp.train_loss, exp.optimizer, 0.999, True))
  state = exp.init_state()
  images = jnp.zeros((1, batch_size, *exp.image_shape))
  batch = {"image": images}
  compiled = step.lower(state, batch, exp.train_key).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  seconds = median_seconds(lambda: compiled(state, batch, exp.train_key)[1]["loss"], repeats)
  return {"batch_size": batch_size, "ms_per_step": 1e3 * seconds, "gflop_per_step": flops / 1e9,
          "achieved_tflops": flops / seconds / 1e12}


def sampler_figures(config, batch_size: int, repeats: int) -> dict:
  config.sampling.update(method="pc", predictor="euler_maruyama", corrector="none")
  config.model.num_scales = min(config.model.num_scales, 100)
  exp = builders.build_experiment(config)
  params = exp.init_state().ema_params
  seconds = median_seconds(lambda: exp.sampler(exp.sample_key, params, batch_size)[0], repeats)
  return {"batch_size": batch_size, "steps": config.model.num_scales, "seconds": seconds,
          "samples_per_s": batch_size / seconds}


def likelihood_figures(config, num_images: int) -> dict:
  exp = builders.build_experiment(config)
  model = exp.unconditional_model(exp.init_state().ema_params)
  x = jax.random.uniform(jax.random.PRNGKey(0), (num_images, *exp.image_shape))
  fn = jax.jit(lambda k, x: likelihood.log_likelihood(k, model, exp.sde, x, rtol=1e-5, atol=1e-5))
  jax.block_until_ready(fn(jax.random.PRNGKey(1), x))
  start = time.perf_counter()
  _, _, nfe = jax.block_until_ready(fn(jax.random.PRNGKey(1), x))
  return {"images": num_images, "nfe": int(nfe), "seconds": time.perf_counter() - start}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/vp/cifar10_ddpmpp_continuous.py")
  parser.add_argument("--batch_sizes", default="8,64,128")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--compute_dtype", default="float32", choices=builders.COMPUTE_DTYPES)
  parser.add_argument("--remat", action="store_true")
  args = parser.parse_args()
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  gemm = 4096
  if args.quick:
    batch_sizes, args.repeats, gemm = [2], 1, 256
  device = jax.devices()[0]
  report = {"device": f"{device.platform}: {device.device_kind} x {jax.device_count()}",
            "compute_dtype": args.compute_dtype, "remat": args.remat,
            "peak_tflops_float32": matmul_peak(gemm, jnp.float32, args.repeats) / 1e12}
  if device.platform != "cpu":
    report["peak_tflops_bfloat16"] = matmul_peak(gemm, jnp.bfloat16, args.repeats) / 1e12
  print(json.dumps(report), flush=True)
  for name, tiny in (("tiny NCSN++ (issue 15)", True), (args.config, False)):
    config = load(args.config if not tiny else "configs/ve/cifar10_ncsnpp_continuous.py",
                  args.quick, tiny, args.compute_dtype, args.remat)
    rows = []
    for b in batch_sizes:
      row = train_step_figures(config, b, args.repeats)
      row["mfu_float32"] = row["achieved_tflops"] / report["peak_tflops_float32"]
      rows.append(row)
      print(json.dumps({"model": name, "train_step": row}), flush=True)
    sampler = sampler_figures(config, batch_sizes[-1], max(1, args.repeats // 2))
    print(json.dumps({"model": name, "pc_sampler": sampler}), flush=True)
    lik = likelihood_figures(config, 2 if args.quick else 8)
    print(json.dumps({"model": name, "likelihood": lik}), flush=True)
    report[name] = {"train_step": rows, "pc_sampler": sampler, "likelihood": lik}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
