"""Interpolation between samples of a 2-D mixture through probability-flow ODE latents; writes a PNG.

  PYTHONPATH=. python experiments/interpolation_grid.py --out docs/figures/interpolation.png
  --quick: 2 pairs, 5 points (a smoke test, seconds), into a temporary folder unless --out names a file.

Each row pairs two data points: they are encoded with ``ode.encode``, their latents joined by
slerp (left) or lerp (right), and every point decoded (``interpolation.interpolate``, exact scores).
"""
import argparse
import os
import tempfile

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from score_sde.samplers import interpolation
from score_sde.diffusion import toy  # noqa: E402
from score_sde.diffusion import sde as sde_lib  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="ring", choices=["ring", "grid", "spiral"])
  parser.add_argument("--pairs", type=int, default=6)
  parser.add_argument("--points", type=int, default=17)
  parser.add_argument("--out", default=None, help="default: docs/figures/interpolation.png")
  parser.add_argument("--quick", action="store_true", help="pairs=2, points=5")
  args = parser.parse_args()
  if args.quick:
    args.pairs, args.points = 2, 5
  args.out = args.out or (os.path.join(tempfile.mkdtemp(prefix="interpolation_"), "interpolation.png")
                          if args.quick else "docs/figures/interpolation.png")
  target = toy.get_shape(args.shape)
  sde = sde_lib.VPSDE()
  score_fn = target.score_fn(sde)
  x_a = target.sample(jax.random.PRNGKey(0), args.pairs)
  x_b = target.sample(jax.random.PRNGKey(1), args.pairs)
  background = np.asarray(target.sample(jax.random.PRNGKey(2), 3000))
  fig, axes = plt.subplots(1, 2, figsize=(10, 5))
  for ax, interpolant in zip(axes, ("slerp", "lerp")):
    path, _ = interpolation.interpolate(score_fn, sde, x_a, x_b, args.points, interpolant=interpolant,
                                        rtol=1e-4, atol=1e-4)
    path = np.asarray(path)  # [K, B, 2]
    ax.scatter(*background.T, s=1, c="0.8")
    for b in range(args.pairs):
      ax.plot(path[:, b, 0], path[:, b, 1], ".-", ms=4)
    ax.set(title=f"{interpolant} of PF-ODE latents", aspect="equal")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
