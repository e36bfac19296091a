"""Samples of a 2-D Gaussian mixture (a ring of 8 modes) drawn by each sampler with the exact score.

Writes docs/figures/toy_samplers.png (needs matplotlib):
  PYTHONPATH=. python experiments/toy_samplers_figure.py [--out docs/figures/toy_samplers.png]
  --quick: 100 samples, N = 40 (a smoke test, seconds; VP's discrete chain needs N > beta_max = 20),
  into a temporary folder unless --out names a file.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from score_sde.samplers import ald, ode, pc
from score_sde.diffusion import toy  # noqa: E402
from score_sde.diffusion import sde as sde_lib  # noqa: E402


def panels(n: int, steps: int):
  """(title, samples [n, 2], info) for the true distribution (info None) and each sampler."""
  mix = toy.ring()
  ve = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=steps)
  vp = sde_lib.VPSDE(N=steps)
  subvp = sde_lib.SubVPSDE(N=steps)
  key = jax.random.PRNGKey(0)
  shape = (n, 2)
  yield "data", mix.sample(key, n), None
  yield "PC VE: reverse diffusion + Langevin", *pc.sample_pc(key, mix.score_fn(ve), ve, shape, eps=1e-5)
  yield "PC VP: Euler-Maruyama", *pc.sample_pc(
      key, mix.score_fn(vp), vp, shape, predictor="euler_maruyama", corrector="none")
  yield "PC VP: ancestral + ALD corrector", *pc.sample_pc(
      key, mix.score_fn(vp), vp, shape, predictor="ancestral_sampling", corrector="ald")
  yield "PC sub-VP: Langevin only (snr .25, 3 steps)", *pc.sample_pc(
      key, mix.score_fn(subvp), subvp, shape, predictor="none", corrector="langevin", snr=0.25,
      n_steps_each=3)
  yield "annealed Langevin (NCSN), VE", *ald.sample_ald(
      key, mix.score_fn(ve), ve, shape, step_lr=2e-5, n_steps_each=5)
  yield "probability-flow ODE, VP (tsit5)", *ode.sample_ode(key, mix.score_fn(vp), vp, shape)
  yield "probability-flow ODE, VE (tsit5)", *ode.sample_ode(key, mix.score_fn(ve), ve, shape, eps=1e-5)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="default: docs/figures/toy_samplers.png")
  parser.add_argument("--n", type=int, default=2000)
  parser.add_argument("--steps", type=int, default=300, help="N of the SDEs")
  parser.add_argument("--quick", action="store_true", help="n=100, steps=40")
  args = parser.parse_args()
  if args.quick:
    args.n, args.steps = 100, 40
  args.out = args.out or (os.path.join(tempfile.mkdtemp(prefix="toy_samplers_"), "toy_samplers.png")
                          if args.quick else "docs/figures/toy_samplers.png")
  fig, axes = plt.subplots(2, 4, figsize=(12, 6.3), sharex=True, sharey=True)
  for ax, (title, x, info) in zip(axes.ravel(), panels(args.n, args.steps)):
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="k" if title == "data" else "C0")
    ax.set_title(title + (f"\nNFE {int(info['nfe'])}" if info else "\n"), fontsize=8.5)
    ax.set_xlim(-6, 6)
    ax.set_ylim(-6, 6)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=80)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
