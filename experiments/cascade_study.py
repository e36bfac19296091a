"""Cascaded super-resolution on the digits: the FDD of an 8x8 base + an 8 -> 16 super-resolution
stage against the direct 16x16 model at equal total training steps, and against the sampling
augmentation level s of the super-resolution stage (CDM's conditioning augmentation).

  PYTHONPATH=. python experiments/cascade_study.py --runs runs          # trains what is missing
  PYTHONPATH=. python experiments/cascade_study.py --quick              # tiny, a smoke test

Trains through the command line (or resumes) the base (configs/digits/ddpmpp_vp_8.py) and the
super-resolution stage (configs/digits/sr_8_to_16.py) for --steps each into RUNS/digits_8 and
RUNS/digits_sr, and uses the main job (configs/digits/ddpmpp_vp_small.py, RUNS/digits, trained for
2 x --steps) as the direct model. For each seed: --num_samples base samples, upsampled at every
level of --levels; the direct model's samples with the same sampler; also the SR stage applied to
the downsampled held-out digits (its upper bound: a perfect base). FDD to the held-out digits,
mean and half-range over seeds. Writes the table between the markers of docs/image_conditioning.md
and docs/figures/cascade.png (rows: base, upsampled at each level, direct).
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

from score_sde.experiment import builders, config_files, restore  # noqa: E402
from score_sde.metrics import digits_classifier as dc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE, SR, DIRECT = ("configs/digits/ddpmpp_vp_8.py", "configs/digits/sr_8_to_16.py",
                    "configs/digits/ddpmpp_vp_small.py")
QUICK = {"model.nf": 8, "model.ch_mult": (1,), "model.attn_resolutions": (), "model.num_scales": 10,
         "training.batch_size": 8,
         "training.snapshot_sampling": False, "training.snapshot_freq_for_preemption": 0}


def _flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]


def overrides(steps: int, quick: bool) -> dict:
  return {"training.n_iters": steps, "training.snapshot_freq": steps, "training.eval_freq": steps,
          **(QUICK if quick else {})}


def load_config(config_file: str, fields: dict):
  config = config_files.load_config_file(os.path.join(ROOT, config_file), "config")
  for key, value in fields.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def train_runs(runs_dir: str, steps: int, quick: bool) -> None:
  runs = [(BASE, "digits_8", steps), (SR, "digits_sr", steps), (DIRECT, "digits", 2 * steps)]
  for config_file, workdir, n in runs:
    cmd = [sys.executable, "main.py", "--config", config_file, "--workdir",
           os.path.join(runs_dir, workdir), "--mode", "train", *_flags(overrides(n, quick))]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"  {time.time() - start:.0f} s", flush=True)


def measure(runs_dir, steps, levels, num_samples, seeds, quick):
  classifier = dc.train_digits_classifier(seed=0, image_size=16)
  _, (x_test, _) = dc.train_test_split(*dc.load_digits_images(16))
  reference = dc.digits_stats(x_test, classifier)
  fdd = lambda images: dc.frechet_digits_distance(images, reference, classifier).value
  base = builders.build_experiment(load_config(BASE, overrides(steps, quick)))
  direct = builders.build_experiment(load_config(DIRECT, overrides(2 * steps, quick)))
  base_params = restore.latest_params(base, os.path.join(runs_dir, "digits_8"))[1]
  direct_params = restore.latest_params(direct, os.path.join(runs_dir, "digits"))[1]
  srs = {s: builders.build_experiment(load_config(SR, {**overrides(steps, quick),
                                                       "super_resolution.sample_aug_level": s}))
         for s in levels}
  sr_params = restore.latest_params(srs[levels[0]], os.path.join(runs_dir, "digits_sr"))[1]
  results = {f"cascade, s = {s:g}": [] for s in levels}
  results.update({"direct 16x16": [], "SR of held-out digits, s = 0": []})
  grids = {}
  test_low = np.asarray(x_test[:num_samples])
  for seed in range(seeds):
    key = jax.random.fold_in(jax.random.PRNGKey(0), seed)
    x8, _ = base.generate(jax.random.fold_in(key, 0), base_params, num_samples)
    low = np.clip(np.asarray(base.inverse_scaler(x8)), 0.0, 1.0)
    grids.setdefault("base 8x8", low[:10])
    for s, exp in srs.items():
      x, _ = exp.generate(jax.random.fold_in(key, 1), sr_params, num_samples,
                          low_res=exp.scaler(low))
      images = np.clip(np.asarray(exp.inverse_scaler(x)), 0.0, 1.0)
      results[f"cascade, s = {s:g}"].append(fdd(images))
      grids.setdefault(f"s = {s:g}", images[:10])
    x, _ = direct.generate(jax.random.fold_in(key, 2), direct_params, num_samples)
    images = np.clip(np.asarray(direct.inverse_scaler(x)), 0.0, 1.0)
    results["direct 16x16"].append(fdd(images))
    grids.setdefault("direct 16x16", images[:10])
    exp0 = srs[levels[0]]
    n = len(test_low)
    x, _ = exp0.generate(jax.random.fold_in(key, 3), sr_params, n,
                         low_res=exp0.super_resolution.downsample(exp0.scaler(test_low)))
    results["SR of held-out digits, s = 0"].append(
        fdd(np.clip(np.asarray(exp0.inverse_scaler(x)), 0.0, 1.0)))
  rows = [(name, float(np.mean(v)), float(np.ptp(v) / 2)) for name, v in results.items()]
  for name, mean, spread in rows:
    print(f"{name:32s} FDD {mean:7.2f} ± {spread:.2f}", flush=True)
  return rows, grids


def plot(grids: dict, figure: str) -> None:
  fig, axes = plt.subplots(len(grids), 1, figsize=(6, 0.75 * len(grids) + 0.3))
  for ax, (name, images) in zip(axes, grids.items()):
    size = images.shape[1]
    framed = [np.pad(np.repeat(np.repeat(im[..., 0], 16 // size, 0), 16 // size, 1), 1,
                     constant_values=0.5) for im in images]
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
  parser.add_argument("--steps", type=int, default=1250, help="per stage; the direct model 2x")
  parser.add_argument("--levels", default="0,0.05,0.1,0.2,0.3")
  parser.add_argument("--num_samples", type=int, default=512)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--skip_training", action="store_true")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "image_conditioning.md"))
  parser.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "cascade.png"))
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  if args.quick:
    args.runs = args.runs or tempfile.mkdtemp(prefix="cascade_")
    args.steps, args.num_samples, args.seeds, args.levels = 2, 16, 1, "0,0.1"
    args.doc, args.figure = os.path.join(args.runs, "doc.md"), os.path.join(args.runs, "f.png")
    with open(args.doc, "w") as f:
      f.write("<!-- cascade:begin -->\n<!-- cascade:end -->\n")
  runs_dir = os.path.abspath(args.runs or os.path.join(ROOT, "runs"))
  if not args.skip_training:
    train_runs(runs_dir, args.steps, args.quick)
  levels = [float(s) for s in args.levels.split(",")]
  rows, grids = measure(runs_dir, args.steps, levels, args.num_samples, args.seeds, args.quick)
  command = "PYTHONPATH=. python experiments/cascade_study.py " + " ".join(sys.argv[1:])
  table = [f"`{command}` ({args.num_samples} samples x {args.seeds} seeds; base and SR stage "
           f"{args.steps} steps each, direct model {2 * args.steps})", "",
           "| model | FDD (mean ± half-range) |", "|---|---|"]
  table += [f"| {name} | {mean:.2f} ± {spread:.2f} |" for name, mean, spread in rows]
  text = open(args.doc).read()
  text = re.sub(r"<!-- cascade:begin -->.*<!-- cascade:end -->",
                lambda _: "<!-- cascade:begin -->\n" + "\n".join(table) + "\n<!-- cascade:end -->",
                text, flags=re.S)
  with open(args.doc, "w") as f:
    f.write(text)
  plot(grids, args.figure)


if __name__ == "__main__":
  main()
