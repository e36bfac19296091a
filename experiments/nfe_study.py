"""Sample quality against the number of score evaluations (NFE) for every sampler, with exact scores.

  PYTHONPATH=. python experiments/nfe_study.py            # ~ a few minutes on 2 CPU cores
  PYTHONPATH=. python experiments/nfe_study.py --quick    # smaller, for a smoke test; its doc
      # and figure go into a temporary folder unless --doc / --figure name them

Targets: a 2-D ring of 8 narrow Gaussians and a 16-D mixture of 8 Gaussians, diffused by the VP SDE,
whose exact scores (``toy.GaussianMixture``) stand in for a perfectly trained network. Error: the
MMD (three RBF bandwidths) between the samples and as many fresh true samples, averaged over
``--seeds`` seeds; the same distance between two true sample sets is the noise floor. Writes docs/figures/nfe_study.png and the table between the markers in
docs/beyond.md. Every sampler is called as ``SAMPLERS[name](key, model, sde, shape, **options)``.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import struct

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from score_sde.samplers import SAMPLERS
from score_sde.diffusion import toy  # noqa: E402
from score_sde.diffusion import sde as sde_lib  # noqa: E402

NFES = (5, 10, 20, 50, 100, 1000)
EPS = 1e-3


def problems():
  ring = toy.ring(n_modes=8, radius=2.0, std=0.1)
  rng = np.random.default_rng(0)
  means = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
  mixture16 = toy.isotropic_mixture(np.ones(8), means, std=0.2)
  return {"2-D ring (8 modes, std 0.1)": ring, "16-D mixture (8 modes, std 0.2)": mixture16}


@struct.dataclass
class IsotropicMixtureScore:
  """Exact score of a diffused mixture with covariances std_k^2 I, without ``toy``'s Cholesky
  factorisations (an order of magnitude faster): p_t = Σ_k w_k N(m μ_k, (m^2 std_k^2 + std(t)^2) I).
  ``run`` checks it against ``toy.GaussianMixture.marginal_score``."""

  target: toy.GaussianMixture
  sde: sde_lib.SDE

  def __call__(self, x, t):
    m, std = self.sde.marginal_params(t)  # [B]
    comp_var = jnp.diagonal(self.target.covs, axis1=-2, axis2=-1)[:, 0]  # [K]
    var = m[:, None] ** 2 * comp_var[None] + std[:, None] ** 2  # [B, K]
    diff = x[:, None, :] - m[:, None, None] * self.target.means[None]  # [B, K, D]
    logits = (jnp.log(self.target.weights)[None] - 0.5 * jnp.sum(diff**2, -1) / var
              - 0.5 * x.shape[-1] * jnp.log(var))
    resp = jax.nn.softmax(logits, axis=-1)
    return -jnp.einsum("bk,bkd->bd", resp / var, diff)


def mmd(x, y, bandwidths=(0.1, 0.3, 1.0)) -> jax.Array:
  """Maximum mean discrepancy (biased V-statistic, square-rooted) between samples x, y [n, D] with a
  sum of RBF kernels exp(-|a - b|^2 / (2 (h √D)^2)). Unlike sliced W_2 on a multimodal target, it is
  not dominated by the multinomial noise of how many samples fall in each mode."""
  scale = np.sqrt(x.shape[1])

  def kernel(a, b):
    d2 = jnp.sum(a**2, 1)[:, None] + jnp.sum(b**2, 1)[None] - 2 * a @ b.T
    return sum(jnp.exp(-d2 / (2 * (h * scale) ** 2)) for h in bandwidths)

  mmd2 = kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()
  return jnp.sqrt(jnp.maximum(mmd2, 0.0))


# Each entry: (nfe budget) -> (name in SAMPLERS, SDE or None for the study's, options) or None if
# the budget does not fit. The VP SDE's N sets the PC step count. Final denoising is as in the
# published table: off for DDIM, DPM-Solver and the adaptive solvers, on for PC and EDM.
def _pc(predictor, corrector, per_step):
  def make(nfe):
    if nfe % per_step:
      return None
    sde = sde_lib.VPSDE(N=nfe // per_step)
    if predictor == "reverse_diffusion" or corrector != "none":
      try:
        sde.check_discretization()
      except ValueError:
        return None  # N <= beta_max: the discrete chain is not defined (every sample NaN)
    options = dict(predictor=predictor, corrector=corrector, snr=0.16, eps=EPS)
    return "pc", sde, options
  return make


def _fixed(name, steps_of_nfe, **options):
  def make(nfe):
    steps = steps_of_nfe(nfe)
    if steps is None:
      return None
    return name, None, {**options, **steps}
  return make


def _heun_steps(nfe):
  return None if nfe < 3 else {"num_steps": (nfe + 1) // 2}


FIXED_STEP = {
    "Euler-Maruyama (PC, no corrector)": _pc("euler_maruyama", "none", 1),
    "reverse diffusion + Langevin (PC)": _pc("reverse_diffusion", "langevin", 2),
    "DDIM (eta=0)": _fixed("ddim", lambda n: {"num_steps": n}, eps=EPS, denoise=False),
    "DDIM (eta=1)": _fixed("ddim", lambda n: {"num_steps": n}, eps=EPS, eta=1.0, denoise=False),
    "EDM Heun": _fixed("edm", _heun_steps, eps=EPS),
    "DPM-Solver++ 2M": _fixed("dpm_solver", lambda n: {"num_steps": n}, order=2, eps=EPS,
                              denoise=False),
    "DPM-Solver++ 3M": _fixed("dpm_solver", lambda n: {"num_steps": n}, order=3, eps=EPS,
                              denoise=False),
    "SDE-DPM-Solver++ 2M": _fixed("dpm_solver", lambda n: {"num_steps": n}, order=2,
                                  stochastic=True, eps=EPS, denoise=False),
}
# Adaptive solvers: the tolerance sets the NFE; their measured NFE is what is plotted.
ODE_RTOLS = (1e-1, 1e-2, 1e-3, 1e-4)
ADAPTIVE_RTOLS = (0.1, 0.05, 0.02, 0.01)


def evaluate(target, name, sde, options, n, seeds):
  """Mean and standard error over seeds of the MMD to fresh true samples, and the mean NFE."""
  score_fn = IsotropicMixtureScore(target, sde)
  errors, nfes = [], []
  for seed in range(seeds):
    k_sample, k_true = jax.random.split(jax.random.PRNGKey(1000 + seed))
    x, info = SAMPLERS[name](k_sample, score_fn, sde, (n, target.dim), **options)
    errors.append(float(mmd(x, target.sample(k_true, n))))
    nfes.append(info["nfe"])
  return np.mean(errors), np.std(errors) / np.sqrt(seeds), np.mean(nfes)


def run(n: int, seeds: int, nfes=NFES, log=print):
  """Returns {problem: {sampler: [(nfe, error, stderr), ...]}} and the noise floors."""
  sde = sde_lib.VPSDE()
  results, floors = {}, {}
  for name, target in problems().items():
    x = target.sample(jax.random.PRNGKey(0), 64)
    t = jnp.linspace(EPS, 1.0, 64)
    np.testing.assert_allclose(IsotropicMixtureScore(target, sde)(x, t), target.marginal_score(sde, x, t),
                               rtol=2e-3, atol=2e-3)
    rows = {}
    floor = [float(mmd(target.sample(jax.random.PRNGKey(s), n), target.sample(jax.random.PRNGKey(100 + s), n)))
             for s in range(seeds)]
    floors[name] = float(np.mean(floor))
    for sampler_name, make in FIXED_STEP.items():
      rows[sampler_name] = []
      for nfe in nfes:
        if nfe > 100 and not sampler_name.startswith("Euler"):
          continue  # keeps the run to minutes; the 1000-NFE baseline is Euler-Maruyama
        entry = make(nfe)
        if entry is None:
          continue
        key, entry_sde, options = entry
        start = time.time()
        err, se, measured = evaluate(target, key, entry_sde or sde, options, n, seeds)
        rows[sampler_name].append((measured, err, se))
        log(f"{name} | {sampler_name} | NFE {measured:.0f} | MMD {err:.4f} ± {se:.4f} "
            f"({time.time() - start:.1f} s)")
    adaptive = {
        "probability-flow ODE (Tsit5, diffrax)": [
            ("ode", dict(rtol=r, atol=r, eps=EPS, denoise=False)) for r in ODE_RTOLS],
        "adaptive SDE (Gotta Go Fast)": [
            ("adaptive_sde", dict(rtol=r, atol=r / 2, eps=EPS, denoise=False))
            for r in ADAPTIVE_RTOLS],
    }
    for sampler_name, variants in adaptive.items():
      rows[sampler_name] = []
      for key, options in variants:
        err, se, measured = evaluate(target, key, sde, options, n, seeds)
        rows[sampler_name].append((measured, err, se))
        log(f"{name} | {sampler_name} | NFE {measured:.0f} | MMD {err:.4f} ± {se:.4f}")
    results[name] = rows
  return results, floors


def plot(results, floors, path):
  fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5.5))
  for ax, (name, rows) in zip(np.atleast_1d(axes), results.items()):
    for sampler_name, pts in rows.items():
      pts = sorted(pts)
      style = "--" if ("SDE" in sampler_name or "eta=1" in sampler_name or "PC" in sampler_name
                       or "churn" in sampler_name) else "-"
      ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style + "o",
                  ms=3, label=sampler_name, capsize=2)
    ax.axhline(floors[name], color="k", lw=0.8, ls=":", label="noise floor (true vs true)")
    ax.set(xscale="log", yscale="log", xlabel="NFE (score evaluations)", ylabel="MMD to true samples",
           title=name)
    ax.grid(True, which="both", alpha=0.3)
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)


def markdown_table(results, floors, nfes=NFES) -> str:
  lines = []
  for name, rows in results.items():
    lines.append(f"**{name}** (noise floor {floors[name]:.4f})\n")
    lines.append("| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    lines.append("|---" * (len(nfes) + 1) + "|")
    for sampler_name, pts in rows.items():
      if "adaptive" in sampler_name or "ODE" in sampler_name:
        continue
      # EDM Heun spends 2 N - 1 evaluations: it goes in the column of 2 N.
      by_nfe = {min(nfes, key=lambda c: abs(c - p[0])): p[1] for p in pts}
      lines.append(f"| {sampler_name} | " + " | ".join(
          f"{by_nfe[n]:.4f}" if n in by_nfe else "–" for n in nfes) + " |")
    lines.append("")
    lines.append("| adaptive sampler | (NFE, MMD) per tolerance |")
    lines.append("|---|---|")
    for sampler_name, pts in rows.items():
      if "adaptive" in sampler_name or "ODE" in sampler_name:
        lines.append(f"| {sampler_name} | " + ", ".join(f"({p[0]:.0f}, {p[1]:.4f})" for p in pts) + " |")
    lines.append("")
  return "\n".join(lines)


def write_table(doc_path, table):
  begin, end = "<!-- nfe_study:begin -->", "<!-- nfe_study:end -->"
  text = open(doc_path).read() if os.path.exists(doc_path) else f"{begin}\n{end}\n"
  if begin not in text:
    text += f"\n{begin}\n{end}\n"
  text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{table}\n{end}", text,
                flags=re.S)
  with open(doc_path, "w") as f:
    f.write(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=1000, help="samples per run")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--quick", action="store_true", help="n=500, 1 seed, NFE {10, 100}")
  parser.add_argument("--figure", default=None, help="default: docs/figures/nfe_study.png")
  parser.add_argument("--doc", default=None, help="default: docs/beyond.md")
  args = parser.parse_args()
  nfes = (10, 100) if args.quick else NFES
  outputs = tempfile.mkdtemp(prefix="nfe_study_") if args.quick else "docs"
  args.figure = args.figure or os.path.join(outputs, "figures", "nfe_study.png")
  args.doc = args.doc or os.path.join(outputs, "beyond.md")
  if args.quick:
    args.n, args.seeds = 500, 1
  start = time.time()
  results, floors = run(args.n, args.seeds, nfes)
  plot(results, floors, args.figure)
  write_table(args.doc, markdown_table(results, floors, nfes))
  print(f"wrote {args.figure} and {args.doc} in {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
