"""Samples a 2-D Gaussian mixture with the exact score and the reverse-diffusion sampler; writes a PNG.

  python experiments/toy_demo.py --shape ring --out toy_samples.png
"""
import argparse

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from score_sde import sde as sde_lib  # noqa: E402
from score_sde import toy  # noqa: E402


def reverse_diffusion_samples(key, score_fn, sde, n):
  """Reverse-diffusion predictor (Song et al. 2021, eq. 47) from T to eps, returning the final mean."""
  rsde = sde.reverse(score_fn)
  timesteps = jnp.linspace(sde.T, 1e-3, sde.N)
  k_prior, k_steps = jax.random.split(key)

  def step(x, inp):
    t, k = inp
    f, G = rsde.discretize(x, jnp.full((n,), t))
    mean = x - f
    return mean + G[:, None] * jax.random.normal(k, x.shape), mean

  x0 = sde.prior_sampling(k_prior, (n, 2))
  _, means = jax.lax.scan(step, x0, (timesteps, jax.random.split(k_steps, sde.N)))
  return means[-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="ring", choices=["ring", "grid", "spiral"])
  parser.add_argument("--n", type=int, default=4000)
  parser.add_argument("--out", default="toy_samples.png")
  args = parser.parse_args()
  dist = toy.get_shape(args.shape)
  sde = sde_lib.VPSDE(N=500)
  key_true, key_sample = jax.random.split(jax.random.PRNGKey(0))
  samples = jax.jit(reverse_diffusion_samples, static_argnums=(1, 3))(
      key_sample, dist.score_fn(sde), sde, args.n)
  truth = dist.sample(key_true, args.n)
  fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
  for ax, pts, title in [(axes[0], truth, "data"), (axes[1], samples, "reverse diffusion, VP, N=500")]:
    ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
    ax.set_title(title)
    ax.set_aspect("equal")
  fig.tight_layout()
  fig.savefig(args.out, dpi=100)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
