"""ControlNet on the digits: adherence to Sobel edge maps and FDD against control_scale, and the
adherence of snapshots through training (the "sudden convergence" ControlNet users report).

  PYTHONPATH=. python experiments/controlnet_study.py --runs runs        # trains what is missing
  PYTHONPATH=. python experiments/controlnet_study.py --quick            # tiny, a smoke test

Trains through the command line (or resumes) the main job (configs/digits/ddpmpp_vp_small.py) into
RUNS/digits when it is missing, then the ControlNet of configs/digits/controlnet_edges.py for
--steps steps into RUNS/digits_edges with a snapshot every --every steps. Samples with DDIM
(--ddim_steps, eta 0; the same sampler everywhere) under the edge maps of the held-out digits.
Adherence: the Pearson correlation between a sample's Sobel edge map and its control, averaged;
for reference, the held-out digits paired with the controls of other digits (chance level).
FDD: to the held-out digits. Writes the tables between the markers of docs/image_conditioning.md
and docs/figures/controlnet_edges.png (controls, then samples at each control_scale).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from score_sde.experiment import builders, config_files, controlnet  # noqa: E402
from score_sde.io import checkpointing  # noqa: E402
from score_sde.metrics import digits_classifier as dc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE, CONTROL = "configs/digits/ddpmpp_vp_small.py", "configs/digits/controlnet_edges.py"
QUICK = {"model.nf": 8, "model.ch_mult": (1,), "model.attn_resolutions": (),
         "training.batch_size": 8, "training.snapshot_freq_for_preemption": 0}


def _flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]


def load_config(config_file: str, fields: dict):
  config = config_files.load_config_file(os.path.join(ROOT, config_file), "config")
  for key, value in fields.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def base_overrides(quick: bool) -> dict:
  return {"training.n_iters": 3, "training.snapshot_freq": 3, "training.eval_freq": 3,
          "training.snapshot_sampling": False, **QUICK} if quick else {}


def control_overrides(runs_dir: str, steps: int, every: int, quick: bool) -> dict:
  return {"controlnet.base_workdir": os.path.join(runs_dir, "digits"), "training.n_iters": steps,
          "training.snapshot_freq": every, "training.eval_freq": every,
          "training.snapshot_sampling": False, **(QUICK if quick else {})}


def train_runs(runs_dir: str, steps: int, every: int, quick: bool) -> None:
  runs = [(BASE, "digits", "train", base_overrides(quick)),
          (CONTROL, "digits_edges", "train_controlnet",
           control_overrides(runs_dir, steps, every, quick))]
  for config_file, workdir, mode, fields in runs:
    cmd = [sys.executable, "main.py", "--config", config_file, "--workdir",
           os.path.join(runs_dir, workdir), "--mode", mode, *_flags(fields)]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"  {time.time() - start:.0f} s", flush=True)


def _sampler(ddim_steps: int) -> dict:
  return {"sampling.method": "ddim", "sampling.num_steps": ddim_steps, "sampling.eta": 0.0}


def measure(runs_dir, steps, every, scales, num_samples, seeds, ddim_steps, quick):
  classifier = dc.train_digits_classifier(seed=0, image_size=16)
  _, (x_test, _) = dc.train_test_split(*dc.load_digits_images(16))
  reference = dc.digits_stats(x_test, classifier)
  fdd = lambda images: dc.frechet_digits_distance(images, reference, classifier).value
  fields = {**control_overrides(runs_dir, steps, every, quick), **_sampler(ddim_steps)}
  exps = {s: builders.build_experiment(load_config(CONTROL, {**fields, "controlnet.control_scale": s}))
          for s in scales}
  exp = exps[1.0]
  workdir = os.path.join(runs_dir, "digits_edges")
  ckpts = checkpointing.TrainCheckpoints(workdir, read_only=True)
  target = exp.abstract_state()
  snapshots = sorted(int(d) for d in os.listdir(ckpts.snapshot_dir) if d.isdigit())
  params = {step: ckpts.restore_snapshot(step, target).ema_params for step in snapshots}
  ckpts.close()
  final = params[snapshots[-1]]
  images = np.asarray(x_test[np.arange(num_samples) % len(x_test)])
  controls = np.asarray(exp.controlnet.control(images))
  spec = exp.controlnet

  def run(e, p, key):
    x, _ = e.generate(key, p, num_samples, control=controls)
    samples = np.clip(np.asarray(e.inverse_scaler(x)), 0.0, 1.0)
    return samples, float(controlnet.adherence(samples, controls, spec).mean())

  # Adherence through training (control_scale 1, one seed), from the base (step 0) on.
  trace = [(0, run(exps[0.0], final, jax.random.PRNGKey(0))[1])]
  for step in snapshots:
    trace.append((step, run(exp, params[step], jax.random.PRNGKey(0))[1]))
    print(f"step {step:5d}: adherence {trace[-1][1]:.3f}", flush=True)

  rows, grids = [], {"control": controls[:10]}
  for s, e in exps.items():
    adh, dist = [], []
    for seed in range(seeds):
      samples, a = run(e, final, jax.random.PRNGKey(100 + seed))
      adh.append(a)
      dist.append(fdd(samples))
      grids.setdefault(f"scale {s:g}", samples[:10])
    rows.append((f"control_scale {s:g}", np.mean(adh), np.ptp(adh) / 2, np.mean(dist),
                 np.ptp(dist) / 2))
    print(f"{rows[-1][0]:20s} adherence {rows[-1][1]:.3f} FDD {rows[-1][3]:.2f}", flush=True)
  shuffled = images[np.roll(np.arange(num_samples), 1)]
  rows.append(("held-out digits, other digits' controls",
               float(controlnet.adherence(shuffled, controls, spec).mean()), 0.0, fdd(images), 0.0))
  return trace, rows, grids


def sudden_step(trace) -> int:
  """The first snapshot whose adherence is past half-way from the base's to the final one."""
  start, end = trace[0][1], trace[-1][1]
  return next(step for step, a in trace if a - start >= 0.5 * (end - start))


def plot(grids: dict, figure: str) -> None:
  fig, axes = plt.subplots(len(grids), 1, figsize=(6, 0.75 * len(grids) + 0.3))
  for ax, (name, images) in zip(axes, grids.items()):
    framed = [np.pad(im[..., 0], 1, constant_values=0.5) for im in images]
    ax.imshow(np.concatenate(framed, axis=1), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(figure) or ".", exist_ok=True)
  fig.savefig(figure, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default=None)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--every", type=int, default=100, help="snapshot interval")
  parser.add_argument("--scales", default="0,0.5,1,2")
  parser.add_argument("--num_samples", type=int, default=256)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--ddim_steps", type=int, default=50)
  parser.add_argument("--skip_training", action="store_true")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "image_conditioning.md"))
  parser.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures",
                                                       "controlnet_edges.png"))
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  if args.quick:
    args.runs = args.runs or tempfile.mkdtemp(prefix="controlnet_")
    args.steps, args.every, args.num_samples, args.seeds, args.ddim_steps = 2, 2, 8, 1, 3
    args.scales = "0,1"
    args.doc, args.figure = os.path.join(args.runs, "doc.md"), os.path.join(args.runs, "f.png")
    with open(args.doc, "w") as f:
      f.write("<!-- controlnet:begin -->\n<!-- controlnet:end -->\n")
  runs_dir = os.path.abspath(args.runs or os.path.join(ROOT, "runs"))
  if not args.skip_training:
    train_runs(runs_dir, args.steps, args.every, args.quick)
  scales = [float(s) for s in args.scales.split(",")]
  if 1.0 not in scales or 0.0 not in scales:
    parser.error("--scales must include 0 (the base model) and 1")
  trace, rows, grids = measure(runs_dir, args.steps, args.every, scales, args.num_samples,
                               args.seeds, args.ddim_steps, args.quick)
  command = "PYTHONPATH=. python experiments/controlnet_study.py " + " ".join(sys.argv[1:])
  table = [f"`{command}` ({args.num_samples} samples x {args.seeds} seeds, DDIM "
           f"{args.ddim_steps} steps, ControlNet trained {args.steps} steps)", "",
           "| samples | adherence (mean ± half-range) | FDD (mean ± half-range) |", "|---|---|---|"]
  table += [f"| {name} | {a:.3f} ± {da:.3f} | {f:.2f} ± {df:.2f} |" for name, a, da, f, df in rows]
  table += ["", f"Adherence through training (control_scale 1, one seed; step 0 is the base "
            f"model). Half-way from the base's to the final adherence at step "
            f"{sudden_step(trace)}.", "", "| step | " + " | ".join(str(s) for s, _ in trace) + " |",
            "|---" * (len(trace) + 1) + "|",
            "| adherence | " + " | ".join(f"{a:.3f}" for _, a in trace) + " |"]
  text = open(args.doc).read()
  text = re.sub(r"<!-- controlnet:begin -->.*<!-- controlnet:end -->",
                lambda _: "<!-- controlnet:begin -->\n" + "\n".join(table)
                + "\n<!-- controlnet:end -->", text, flags=re.S)
  with open(args.doc, "w") as f:
    f.write(text)
  plot(grids, args.figure)


if __name__ == "__main__":
  main()
