"""Few-step generation on the digits: Fréchet Digits Distance against NFE for a score model with
DPM-Solver++ and Euler–Maruyama, consistency distillation from it, improved consistency training,
and 1- and 2-rectified flow.

  PYTHONPATH=. python experiments/few_step_study.py --runs runs      # trains what is missing
  PYTHONPATH=. python experiments/few_step_study.py --quick           # tiny, for a smoke test:
      # its runs, doc and figure go into a temporary folder (or --runs), never into docs/

Trains (or resumes) the five runs through the command line, in order: the README's main job
(configs/digits/ddpmpp_vp_small.py), CD from it (cd.py), iCT (ict.py), 1-RF (rectified_flow.py),
its reflow pairs and 2-RF (reflow.py). Each run's EMA parameters are then sampled by every setting
of SETTINGS with ``--num_samples`` samples per seed; FDD against the held-out digits of the
evaluation's metric (``metrics.digits_classifier``), mean and half-range over ``--seeds`` seeds.
Writes the table between the markers of docs/few_step.md and docs/figures/few_step.png.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from score_sde.experiment import builders, config_files, restore  # noqa: E402
from score_sde.metrics import digits_classifier as dc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# run -> (config file, workdir name, extra overrides given the runs folder)
RUNS = {
    "score": ("configs/digits/ddpmpp_vp_small.py", "digits", lambda r: {}),
    "cd": ("configs/digits/cd.py", "digits_cd",
           lambda r: {"consistency.teacher_workdir": os.path.join(r, "digits")}),
    "ict": ("configs/digits/ict.py", "digits_ict", lambda r: {}),
    "rf": ("configs/digits/rectified_flow.py", "digits_rf", lambda r: {}),
    "2rf": ("configs/digits/reflow.py", "digits_2rf",
            lambda r: {"data.path": os.path.join(r, "digits_rf", "reflow_pairs"),
                       "training.init_from": os.path.join(r, "digits_rf")}),
}
QUICK = {"training.n_iters": 4, "training.snapshot_freq": 4, "training.snapshot_freq_for_preemption": 0,
         "training.eval_freq": 4, "training.batch_size": 8, "training.snapshot_sampling": False,
         "reflow.num_pairs": 16, "eval.batch_size": 16, "model.nf": 8, "model.ch_mult": (1,),
         "model.attn_resolutions": (), "model.num_scales": 20}

# (family label, run, sampling fields): every setting of the study.
SETTINGS = [
    ("score, DPM-Solver++", "score", {"method": "dpm_solver", "num_steps": 10, "order": 2,
                                      "noise_removal": False}),
    ("score, DPM-Solver++", "score", {"method": "dpm_solver", "num_steps": 20, "order": 2,
                                      "noise_removal": False}),
    ("score, Euler–Maruyama", "score", {"method": "pc", "predictor": "euler_maruyama",
                                        "corrector": "none"}),
    ("CD", "cd", {"method": "consistency", "num_steps": 1}),
    ("CD", "cd", {"method": "consistency", "num_steps": 2}),
    ("CD", "cd", {"method": "consistency", "num_steps": 4}),
    ("iCT", "ict", {"method": "consistency", "num_steps": 1}),
    ("iCT", "ict", {"method": "consistency", "num_steps": 2}),
    ("1-RF, Euler", "rf", {"method": "flow", "solver": "euler", "num_steps": 1,
                                   "noise_removal": False}),
    ("1-RF, Euler", "rf", {"method": "flow", "solver": "euler", "num_steps": 2,
                                   "noise_removal": False}),
    ("1-RF, Euler", "rf", {"method": "flow", "solver": "euler", "num_steps": 4,
                                   "noise_removal": False}),
    ("1-RF, Euler", "rf", {"method": "flow", "solver": "euler", "num_steps": 8,
                                   "noise_removal": False}),
    ("1-RF, adaptive (dopri5)", "rf", {"method": "ode", "solver": "dopri5", "rtol": 1e-5,
                                       "atol": 1e-5, "noise_removal": False}),
    ("2-RF, Euler", "2rf", {"method": "flow", "solver": "euler", "num_steps": 1,
                                   "noise_removal": False}),
    ("2-RF, Euler", "2rf", {"method": "flow", "solver": "euler", "num_steps": 2,
                                   "noise_removal": False}),
]


def _run_overrides(name: str, runs_dir: str, quick: bool) -> dict:
  """The overrides of run ``name``; with --quick also the tiny network, for CD's teacher too (a
  config file in the runs folder that applies them to the main job's config)."""
  overrides = dict(RUNS[name][2](runs_dir), **(QUICK if quick else {}))
  if quick and name == "cd":
    teacher = os.path.join(runs_dir, "quick_teacher_config.py")
    with open(teacher, "w") as f:
      f.write(f"import sys\nsys.path.insert(0, {ROOT!r})\n"
              "from configs.digits import ddpmpp_vp_small\n\n\ndef get_config():\n"
              "  config = ddpmpp_vp_small.get_config()\n"
              + "".join(f"  config.{k} = {v!r}\n" for k, v in QUICK.items()) + "  return config\n")
    overrides["consistency.teacher_config"] = teacher
  return overrides


def _flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]


def train_runs(runs_dir: str, quick: bool) -> None:
  """Trains (or resumes) every run through main.py; 1-RF's reflow pairs come before 2-RF."""
  for name, (config_file, workdir, _) in RUNS.items():
    workdir = os.path.join(runs_dir, workdir)
    modes = ["train"]
    if name == "rf":
      modes.append("reflow_pairs")
    for mode in modes:
      cmd = [sys.executable, "main.py", "--config", config_file, "--workdir", workdir, "--mode",
             mode, *_flags(_run_overrides(name, runs_dir, quick))]
      print("$", " ".join(cmd[1:]), flush=True)
      start = time.time()
      subprocess.run(cmd, cwd=ROOT, check=True)
      print(f"  {mode} of {name}: {time.time() - start:.0f} s", flush=True)


def load_config(config_file: str, overrides: dict):
  config = config_files.load_config_file(os.path.join(ROOT, config_file), "config")
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def measure(runs_dir: str, num_samples: int, seeds: int, quick: bool) -> list[dict]:
  """FDD (mean, half-range over seeds) and NFE of every setting (with --quick, of the first
  setting of each family)."""
  first_of_family = {}
  for setting in SETTINGS:
    first_of_family.setdefault(setting[0], setting)
  settings = list(first_of_family.values()) if quick else SETTINGS
  classifier = dc.train_digits_classifier(seed=0, image_size=16)
  _, (x_test, _) = dc.train_test_split(*dc.load_digits_images(16))
  reference = dc.digits_stats(x_test, classifier)
  rows, params_of = [], {}
  for label, run, sampling in settings:
    config_file, workdir, _ = RUNS[run]
    config = load_config(config_file, _run_overrides(run, runs_dir, quick))
    for field, value in sampling.items():
      config.sampling[field] = value
    exp = builders.build_experiment(config)
    if run not in params_of:
      params_of[run] = restore.latest_params(exp, os.path.join(runs_dir, workdir))[1]
    fdds, nfe = [], None
    for seed in range(seeds):
      key = jax.random.fold_in(exp.sample_key, 1000 + seed)
      x, info = exp.sampler(key, params_of[run], num_samples)
      images = np.clip(np.asarray(exp.inverse_scaler(x)), 0.0, 1.0)
      fdds.append(dc.frechet_digits_distance(images, reference, classifier).value)
      nfe = int(info["nfe"])
    rows.append({"family": label, "run": run, "nfe": nfe, "fdd": float(np.mean(fdds)),
                 "spread": float(np.ptp(fdds) / 2), "setting": sampling})
    print(f"{label:28s} NFE {nfe:4d}  FDD {np.mean(fdds):7.2f} ± {np.ptp(fdds) / 2:.2f}", flush=True)
  return rows


def write_table(rows: list[dict], doc: str, header: str) -> None:
  lines = [header, "", "| model, sampler | NFE | FDD (mean ± half-range) |", "|---|---|---|"]
  lines += [f"| {r['family']} | {r['nfe']} | {r['fdd']:.2f} ± {r['spread']:.2f} |" for r in rows]
  table = "\n".join(lines)
  text = open(doc).read() if os.path.exists(doc) else "<!-- few_step:begin -->\n<!-- few_step:end -->\n"
  text = re.sub(r"<!-- few_step:begin -->.*<!-- few_step:end -->",
                lambda _: f"<!-- few_step:begin -->\n{table}\n<!-- few_step:end -->", text,
                flags=re.S)
  with open(doc, "w") as f:
    f.write(text)


def plot(rows: list[dict], figure: str) -> None:
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  families = {}
  for r in rows:
    families.setdefault(r["family"].split(",")[0], []).append(r)
  for family, rs in families.items():
    rs = sorted(rs, key=lambda r: r["nfe"])
    ax.errorbar([r["nfe"] for r in rs], [r["fdd"] for r in rs], yerr=[r["spread"] for r in rs],
                marker="o", capsize=3, label=family)
  ax.set_xscale("log")
  ax.set_yscale("log")  # 1-RF at one step is 30x the rest
  ax.set_xlabel("NFE (network evaluations per sample)")
  ax.set_ylabel("Fréchet Digits Distance")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  os.makedirs(os.path.dirname(figure) or ".", exist_ok=True)
  fig.savefig(figure, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default=None, help="folder of the five runs (default: runs/, or a "
                      "temporary folder with --quick)")
  parser.add_argument("--num_samples", type=int, default=512)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--skip_training", action="store_true")
  parser.add_argument("--doc", default=None, help="default: docs/few_step.md (--quick: in --runs)")
  parser.add_argument("--figure", default=None,
                      help="default: docs/figures/few_step.png (--quick: in --runs)")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  if args.quick:
    import tempfile
    args.runs = args.runs or tempfile.mkdtemp(prefix="few_step_")
    args.num_samples, args.seeds = 16, 1
  runs_dir = os.path.abspath(args.runs or os.path.join(ROOT, "runs"))
  outputs = runs_dir if args.quick else os.path.join(ROOT, "docs")
  args.doc = args.doc or os.path.join(outputs, "few_step.md")
  args.figure = args.figure or os.path.join(outputs, "figures", "few_step.png")
  if not args.skip_training:
    train_runs(runs_dir, args.quick)
  rows = measure(runs_dir, args.num_samples, args.seeds, args.quick)
  load = os.getloadavg()
  header = (f"Measured by `experiments/few_step_study.py` ({args.num_samples} samples per seed, "
            f"{args.seeds} seeds; load average {load[0]:.1f} at the end).")
  write_table(rows, args.doc, header)
  plot(rows, args.figure)
  print(f"Wrote {args.doc} and {args.figure}")


if __name__ == "__main__":
  main()
