"""Likelihood NFE and wall time: per-sample vs batch step control vs the reference's scipy RK45.

  PYTHONPATH=. python experiments/likelihood_nfe.py --config configs/digits/ddpmpp_vp_small.py \\
      --workdir runs/digits --reference /path/to/score_sde_pytorch [--num_images 33] [--write]
  PYTHONPATH=. python experiments/likelihood_nfe.py --train_steps 300 --workdir /tmp/nfe_run ...

One run, one trained model, the same test images, the same dequantization noise and the same
Hutchinson (Rademacher) probes for all three solves, at rtol = atol = --tol:
  - ours, step_control='per_sample' (diffrax, one adaptive solve per sample under vmap);
  - ours, step_control='batch' (one diffrax solve of the whole batch, one RMS error norm);
  each with the diffrax solvers of --solvers (default Tsit5, the ODE sampler's default, and
  Dopri5, the likelihood's default: the Dormand-Prince pair that scipy's RK45 also is, stepped by
  RK45's rule, ``ode.HairerController``);
  - the reference's solver: ``scipy.integrate.solve_ivp(ode_func, (eps, T), init, rtol, atol,
    method='RK45')`` on the flattened batch [x, Delta] (float64 state, float32 model), driven as in
    the reference's likelihood.py, with OUR model's drift and divergence (jitted, batched) as the
    numpy function, so the solver is the only difference.
It also reports, for 'per_sample', the fraction of the batch's field evaluations that were useful
(sum of per-sample NFE / (B * max NFE)): the rest are masked evaluations of finished samples.
``--reference`` is a checkout of yang-song/score_sde_pytorch: its likelihood.py is read to check
that it still calls solve_ivp as driven here (torch is not needed). ``--write`` puts the table
between the likelihood_nfe markers of docs/performance.md.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from score_sde.experiment import builders, config_files, restore  # noqa: E402
from score_sde.samplers import common, likelihood  # noqa: E402

QUICK_MODEL = {"nf": 8, "ch_mult": (1,), "attn_resolutions": ()}  # --quick: a tiny network
SOLVE_IVP_CALL = "integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method=method)"


def check_reference(path: str) -> str:
  """The reference's likelihood.py must call solve_ivp as ``scipy_rk45`` does; returns its commit."""
  src = open(os.path.join(path, "likelihood.py")).read()
  if SOLVE_IVP_CALL not in src or "method='RK45'" not in src:
    raise SystemExit(f"{path}/likelihood.py no longer calls {SOLVE_IVP_CALL} with RK45: update "
                     "scipy_rk45 to match it.")
  try:
    return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown commit"


def train(config_path: str, workdir: str, steps: int, model_fields: dict) -> None:
  cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={config_path}",
         f"--workdir={workdir}", "--mode=train", f"--config.training.n_iters={steps}",
         f"--config.training.snapshot_freq={steps}", "--config.training.snapshot_sampling=False",
         *(f"--config.model.{k}={v!r}" for k, v in model_fields.items())]
  print("training:", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": ROOT})


def scipy_rk45(field, y_model, probes_shape, eps, T, rtol, atol):
  """The reference's likelihood_fn solve: RK45 on the flattened batch [x, Delta], float64 state."""
  shape = y_model.shape
  b = shape[0]
  zeros = jnp.zeros((b,), jnp.float32)

  def ode_func(t, x):
    sample = jnp.asarray(x[:-b].reshape(shape), jnp.float32)
    drift, logp_grad = field(jnp.float32(t), (sample, zeros))
    return np.concatenate([np.asarray(drift).reshape(-1), np.asarray(logp_grad).reshape(-1)], axis=0)

  init = np.concatenate([np.asarray(y_model).reshape(-1), np.zeros((b,))], axis=0)
  solution = integrate.solve_ivp(ode_func, (eps, T), init, rtol=rtol, atol=atol, method="RK45")
  zp = solution.y[:, -1]
  return zp[:-b].reshape(shape), zp[-b:], solution.nfev


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(ROOT, "configs/digits/ddpmpp_vp_small.py"))
  parser.add_argument("--workdir", default=None, help="work directory of the trained model")
  parser.add_argument("--train_steps", type=int, default=0,
                      help="first train the config for this many steps into --workdir (main.py)")
  parser.add_argument("--reference", default=None, help="checkout of yang-song/score_sde_pytorch")
  parser.add_argument("--num_images", type=int, default=33)
  parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol")
  parser.add_argument("--eps", type=float, default=1e-5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--solvers", default="tsit5,dopri5",
                      help="our diffrax solvers to run (ode.SOLVERS), comma-separated")
  parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (median reported)")
  parser.add_argument("--skip_scipy", action="store_true")
  parser.add_argument("--write", action="store_true", help="write the table to docs/performance.md")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: a tiny network (QUICK_MODEL) trained 2 steps into a temporary "
                      "workdir, 2 images, tol 1e-3")
  args = parser.parse_args()
  if args.quick:
    import tempfile
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="likelihood_nfe_")
    args.train_steps, args.num_images, args.tol, args.solvers = 2, 2, 1e-3, "dopri5"
  model_fields = QUICK_MODEL if args.quick else {}
  if not args.workdir:
    parser.error("--workdir is required (or --quick)")

  ref_commit = check_reference(args.reference) if args.reference else None
  if args.train_steps:
    train(args.config, args.workdir, args.train_steps, model_fields)
  config = config_files.load_config_file(args.config, "config")
  config.model.update(model_fields)
  exp = builders.build_experiment(config)
  step, params = restore.latest_params(exp, args.workdir)
  model = common.as_model(exp.unconditional_model(params))
  sde = exp.sde
  with exp.dataset(split="test", batch_size=args.num_images, num_epochs=1, evaluation=True,
                   drop_remainder=False) as it:
    x = jnp.asarray(next(iter(it))["image"])[:args.num_images]
  b, d = x.shape[0], math.prod(x.shape[1:])
  key_deq, key_probe = jax.random.split(jax.random.PRNGKey(args.seed))
  u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], x.dtype))(common.sample_keys(key_deq, b))
  data = (255.0 * x + u) / 256.0
  scale = 2.0 if exp.data.centered else 1.0
  y = scale * data - (scale - 1.0)
  offset = 8.0 - math.log2(scale)
  bpd_of = lambda logp: float(np.mean(-np.asarray(logp) / (d * math.log(2.0)) + offset))
  tol, eps = args.tol, args.eps
  load = os.getloadavg()
  print(f"model: {args.config} at step {step} ({args.workdir}); {b} test images {tuple(x.shape[1:])}; "
        f"rtol = atol = {tol}; load at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)

  compiled = {(solver, control): likelihood._log_likelihood.lower(
      key_probe, model, sde, y, tol, tol, eps, divergence="rademacher", solver=solver,
      step_control=control).compile()
      for solver in args.solvers.split(",") for control in likelihood.STEP_CONTROLS}
  probes = likelihood.probes_for(key_probe, y, "rademacher")
  field = jax.jit(likelihood.batch_field(model, sde, "rademacher", probes))
  zeros = jnp.zeros((b,), jnp.float32)
  evaluate = lambda: jax.block_until_ready(field(jnp.float32(0.5), (y, zeros)))
  evaluate()

  # Rounds: every row runs once per round, so that a drift of the machine's speed is shared by
  # all rows instead of landing on the last ones; one evaluation of the field is timed each round.
  walls = {k: [] for k in [*compiled, *([] if args.skip_scipy else ["scipy"])]}
  evals, outputs = [], {}
  for _ in range(args.repeats):
    for k, fn in compiled.items():
      start = time.perf_counter()
      outputs[k] = jax.block_until_ready(fn(key_probe, model, sde, y, tol, tol, eps))
      walls[k].append(time.perf_counter() - start)
    if not args.skip_scipy:
      start = time.perf_counter()
      outputs["scipy"] = scipy_rk45(field, y, probes.shape, eps, sde.T, tol, tol)
      walls["scipy"].append(time.perf_counter() - start)
    for _ in range(3):
      start = time.perf_counter()
      evaluate()
      evals.append(time.perf_counter() - start)
  t_eval = float(np.median(evals))

  rows, results = [], {}
  for (solver, control), fn in compiled.items():
    logp, _, nfe = outputs[(solver, control)]
    nfe = np.asarray(nfe)
    extra = ""
    if control == "per_sample":
      extra = (f"per-sample NFE {nfe.min()}..{nfe.max()} (median {int(np.median(nfe))}); useful "
               f"evaluations {nfe.sum() / (b * nfe.max()):.0%} of B x max")
    results[(solver, control)] = np.asarray(logp)
    rows.append((f"ours, {solver}, step_control='{control}'", int(nfe.max()),
                 float(np.median(walls[(solver, control)])), bpd_of(logp), extra))
    print(rows[-1], flush=True)
  if not args.skip_scipy:
    z, delta, nfev = outputs["scipy"]
    logp = np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32))) + delta
    results["scipy"] = logp
    rows.append(("reference solver: scipy solve_ivp RK45, our field", int(nfev),
                 float(np.median(walls["scipy"])), bpd_of(logp), ""))
    print(rows[-1], flush=True)
  load_end = os.getloadavg()

  ref = rows[-1] if not args.skip_scipy else None
  lines = [
      f"Model: `{os.path.relpath(args.config, ROOT)}` trained {step} steps (`{args.workdir}`), "
      f"{b} digits test images {tuple(x.shape[1:])}, uniform dequantization and Rademacher probes "
      f"shared by all rows, rtol = atol = {tol}, eps = {eps}. One batched evaluation of the "
      f"augmented field (score + JVP on {b} images): {1e3 * t_eval:.1f} ms (median of 3 per "
      f"round). Wall: median of {args.repeats} round(s) after compilation, each round running "
      "every row once."
      + (f" Reference: score_sde_pytorch {ref_commit}." if ref_commit else ""),
      f"Load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start, "
      f"{load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} at end (2 cores).",
      "",
      "| solver | NFE | wall s | wall / (NFE x eval) | NFE / ref | wall / ref | bits/dim | notes |",
      "|---|---|---|---|---|---|---|---|"]
  for name, nfe, wall, bpd, extra in rows:
    ratio = (f"{nfe / ref[1]:.2f} | {wall / ref[2]:.2f}") if ref else "- | -"
    lines.append(f"| {name} | {nfe} | {wall:.1f} | {wall / (nfe * t_eval):.2f} | {ratio} | "
                 f"{bpd:.4f} | {extra} |")
  lines.append("")
  per_image = lambda a, b_: np.abs(results[a] - results[b_]).max() / (d * math.log(2.0))
  for solver in args.solvers.split(","):
    if "scipy" in results:
      for control in likelihood.STEP_CONTROLS:
        lines.append(f"- max per-image |bits/dim difference|, {solver} '{control}' vs scipy: "
                     f"{per_image((solver, control), 'scipy'):.1e}")
    lines.append(f"- max per-image |bits/dim difference|, {solver} 'batch' vs 'per_sample': "
                 f"{per_image((solver, 'batch'), (solver, 'per_sample')):.1e}")
  table = "\n".join(lines)
  print(table)
  if args.write:
    write_doc(table, " ".join(["PYTHONPATH=. python experiments/likelihood_nfe.py"] + sys.argv[1:]))


def write_doc(table: str, command: str) -> None:
  """Puts the command and table between the likelihood_nfe markers of docs/performance.md (the
  findings written below them stay)."""
  path = os.path.join(ROOT, "docs", "performance.md")
  begin, end = "<!-- likelihood_nfe:begin -->", "<!-- likelihood_nfe:end -->"
  text = open(path).read()
  if begin not in text or end not in text:
    raise SystemExit(f"{path} has no {begin} ... {end} markers to write between.")
  head, rest = text.split(begin, 1)
  tail = rest.split(end, 1)[1]
  with open(path, "w") as f:
    f.write(f"{head}{begin}\n```\n{command}\n```\n\n{table}\n{end}{tail}")
  print("wrote", path)


if __name__ == "__main__":
  main()
