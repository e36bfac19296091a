"""How far PC replacement inpainting is from the exact conditional, on Gaussian data.

For x ~ N(mean, cov) in 2-D with correlation rho, x_0 = y is observed and x_1 inpainted with the
exact score. Prints the sample mean and variance of x_1 for several samplers next to
  exact:  p(x_1 | x_0 = y), the target;
  limit:  the N -> inf law of predictor-only replacement (toy.replacement_limit).

  PYTHONPATH=. python experiments/inpainting_bias.py [--n 10000] [--steps 1000]
  --quick: rho = 0.5 only, n = 200, N = 100 (a smoke test, seconds; N = 20 breaks the discrete VP).
Results are kept in docs/controllable.md.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from score_sde.samplers import controllable
from score_sde.diffusion import toy  # noqa: E402
from score_sde.diffusion import sde as sde_lib  # noqa: E402

SAMPLERS = {
    "predictor only (reverse diffusion)": dict(corrector="none"),
    "RD + Langevin, snr 0.16, 1 step": dict(corrector="langevin", snr=0.16, n_steps_each=1),
    "RD + Langevin, snr 0.16, 3 steps": dict(corrector="langevin", snr=0.16, n_steps_each=3),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10000, help="samples per run")
  parser.add_argument("--steps", type=int, default=1000, help="N, discretization steps")
  parser.add_argument("--quick", action="store_true", help="rho=0.5, n=200, steps=100")
  args = parser.parse_args()
  rhos = (0.0, 0.5, 0.9)
  if args.quick:
    args.n, args.steps, rhos = 200, 100, (0.5,)
  sdes = {"VP": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=args.steps),
          "VE": sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=args.steps)}
  mean, y = np.array([0.5, -0.3]), 1.0
  print("| SDE | rho | sampler | mean x_1 | var x_1 | exact mean / var | limit mean / var |")
  print("|---|---|---|---|---|---|---|")
  for rho in rhos:
    cov = 0.5 * np.array([[1.0, rho], [rho, 1.0]])
    exact_mean, exact_cov = toy.gaussian_conditional(mean, cov, [0], [y])
    gauss = toy.gaussian(jnp.asarray(mean), jnp.asarray(cov))
    data = jnp.tile(jnp.asarray([[y, 0.0]]), (args.n, 1))
    for sde_name, sde in sdes.items():
      limit_mean, limit_cov = toy.replacement_limit(sde, mean, cov, [0], [y])
      eps = 1e-5 if sde_name == "VE" else 1e-3
      for name, options in SAMPLERS.items():
        start = time.perf_counter()
        x, _ = controllable.inpaint(jax.random.PRNGKey(0), gauss.score_fn(sde), sde, data,
                                    jnp.asarray([1.0, 0.0]), eps=eps, **options)
        x1 = np.asarray(x)[:, 1]
        se = x1.std() / np.sqrt(args.n)
        print(f"| {sde_name} | {rho} | {name} | {x1.mean():.4f} ± {se:.4f} | {x1.var():.4f} | "
              f"{exact_mean[0]:.4f} / {exact_cov[0, 0]:.4f} | "
              f"{limit_mean[0]:.4f} / {limit_cov[0, 0]:.4f} |  ({time.perf_counter() - start:.0f} s)",
              flush=True)


if __name__ == "__main__":
  main()
