"""A quick performance regression guard for CI (issue 15): sampler overhead and likelihood NFE.

  python experiments/regression_guard.py            # ~2.5 minutes on 2 CPU cores; .ci/run runs it
  python experiments/regression_guard.py --quick    # smaller, for the smoke test

Prints two tables:
  - the overhead, wall / (NFE x one score evaluation), of every sampler family of
    experiments/bench_reference.py on a tiny NCSN++ (nf 16, 16x16x3, batch 4), the score
    evaluation timed right before and after each run so that load from other jobs cancels;
  - the likelihood NFE (Dopri5, rtol = atol = 1e-5, both step controls) of 16 test digits under
    the 8x8 digits DDPM++ (configs/digits/ddpmpp_vp_8.py) trained --steps steps here, with fixed
    seeds.
The NFE are deterministic up to the CPU's float rounding, so they are checked: the guard exits 1
when one exceeds its recorded value (NFE_RECORDED, measured when the guard was written) by more
than --nfe_slack. Overhead ratios are timings and only printed, with a warning above
--overhead_warn; experiments/bench_reference.py measures them properly on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_device import median_seconds  # noqa: E402
from bench_reference import OVERHEAD_RUNS, tiny_config  # noqa: E402
from bench_samplers import overhead  # noqa: E402
from configs.digits import ddpmpp_vp_8  # noqa: E402
from score_sde.diffusion import parametrization  # noqa: E402
from score_sde.diffusion import sde as sde_lib  # noqa: E402
from score_sde.experiment import builders, restore, train  # noqa: E402
from score_sde.samplers import SAMPLERS, common, likelihood  # noqa: E402

# Likelihood NFE of the 16 test digits after 300 training steps (this guard's defaults), measured
# on the 2-core AVX2 development machine (2026-12-02, after ode.HairerController replaced diffrax's
# PIDController: 715 / 709 there before it; 721 / 727 on the AVX-512 machine type).
NFE_RECORDED = {"per_sample": 709, "batch": 673}


def sampler_overheads(repeats: int, quick: bool) -> list[tuple[str, int, float, float]]:
  config = tiny_config(8, 8) if quick else tiny_config(16, 16)
  exp = builders.build_experiment(config)
  model = common.as_model(exp.unconditional_model(exp.init_state().params))
  sde = sde_lib.VESDE(sigma_min=exp.sde.sigma_min, sigma_max=exp.sde.sigma_max, N=10 if quick else 50)
  score = jax.jit(lambda x, t: parametrization.as_score_fn(model, exp.sde)(x, t))
  size = config.data.image_size
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, size, size, 3))
  t = jnp.full((4,), 0.5)
  score_eval = lambda: score(x, t)
  median_seconds(score_eval, 3)
  rows = []
  for label, name, options in OVERHEAD_RUNS:
    if quick and "num_steps" in options:
      options = {**options, "num_steps": 5}
    label += f", N = {sde.N}" if name == "pc" else ""
    run = lambda k, name=name, options=options: SAMPLERS[name](k, model, sde, x.shape, **options)
    nfe = run(jax.random.PRNGKey(1))[1]["nfe"]
    wall, ratio = overhead(lambda: run(jax.random.PRNGKey(2))[0], nfe, score_eval, repeats)
    rows.append((label, nfe, wall, ratio))
  return rows


def digits_nfe(steps: int, num_images: int, tol: float) -> dict:
  """{step_control: NFE} of the likelihood of test digits under a freshly trained 8x8 model."""
  config = ddpmpp_vp_8.get_config()
  config.training.update(n_iters=steps, snapshot_freq=steps, snapshot_freq_for_preemption=steps,
                         eval_freq=steps, log_freq=steps, snapshot_sampling=False)
  with tempfile.TemporaryDirectory(prefix="regression_guard_") as workdir:
    train.train(config, workdir)
    exp = builders.build_experiment(config)
    _, params = restore.latest_params(exp, workdir)
  model = common.as_model(exp.unconditional_model(params))
  with exp.dataset(split="test", batch_size=num_images, num_epochs=1, evaluation=True) as it:
    x = jnp.asarray(next(iter(it))["image"])
  out = {}
  for control in likelihood.STEP_CONTROLS:
    _, nfe = likelihood.bits_per_dim(jax.random.PRNGKey(0), model, exp.sde, x,
                                     centered=exp.data.centered,
                                     dequantize=True, rtol=tol, atol=tol, step_control=control)
    out[control] = int(np.max(np.asarray(nfe)))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300, help="training steps of the digits model")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--nfe_slack", type=float, default=0.2, help="allowed relative NFE increase")
  parser.add_argument("--overhead_warn", type=float, default=1.1)
  parser.add_argument("--quick", action="store_true", help="tiny sizes; no NFE check (smoke test)")
  args = parser.parse_args()
  num_images, tol = 16, 1e-5
  if args.quick:
    args.steps, args.repeats, num_images, tol = 2, 1, 2, 1e-3

  rows = sampler_overheads(args.repeats, args.quick)
  print("| sampler | NFE | wall s | wall / (NFE x eval) |\n|---|---|---|---|")
  for label, nfe, wall, ratio in rows:
    flag = "  <- above --overhead_warn" if ratio > args.overhead_warn else ""
    print(f"| {label} | {nfe} | {wall:.3f} | {ratio:.3f} |{flag}")

  nfe = digits_nfe(args.steps, num_images, tol)
  print(f"\n| likelihood of {num_images} test digits, 8x8 DDPM++ after {args.steps} steps, tol "
        f"{tol:g} | NFE | recorded |\n|---|---|---|")
  failed = []
  for control, value in nfe.items():
    recorded = NFE_RECORDED[control]
    print(f"| Dopri5, step_control='{control}' | {value} | {recorded if not args.quick else '-'} |")
    if not args.quick and value > (1 + args.nfe_slack) * recorded:
      failed.append(f"step_control='{control}': {value} NFE > {1 + args.nfe_slack:g} x {recorded}")
  if failed:
    raise SystemExit("likelihood NFE regression: " + "; ".join(failed))


if __name__ == "__main__":
  main()
