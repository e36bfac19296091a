"""DiT and latent diffusion on the digits: the train-step time of DiT against DDPM++ at a matched
parameter count, the KL autoencoder's reconstructions, and a class-conditional latent DiT's Fréchet
Digits Distance and class accuracy against the classifier-free guidance weight w.

  PYTHONPATH=. python experiments/dit_latent_study.py --runs runs          # trains what is missing
  PYTHONPATH=. python experiments/dit_latent_study.py --parts timing       # on a quiet machine
  PYTHONPATH=. python experiments/dit_latent_study.py --quick              # tiny, a smoke test

Runs through the command line: the autoencoder (configs/digits/autoencoder.py, --mode
train_autoencoder) into RUNS/digits_ae and the latent DiT (configs/digits/latent_dit.py) into
RUNS/digits_latent_dit. Parts:
* timing: the compiled train step of configs/digits/dit.py and of the main job's DDPM++
  (ddpmpp_vp_small.py), batch 32, alternating rounds of --timing_steps steps, median ms per step
  (and the latent DiT's, whose step also encodes the batch); the load average is printed beside it.
* autoencoder: PSNR and L1 of the test digits' reconstructions (posterior mean) and the FDD of the
  reconstructions to the test digits (the digits' "rFID"), beside the FDD of the training digits.
* cfg: for each w of --weights, --num_samples samples per seed (labels cycling 0..9), FDD to the
  test digits and the fraction the digits classifier assigns to the requested class, mean and
  half-range over --seeds seeds.
Writes the tables between the markers of docs/dit_latent.md and docs/figures/latent_dit_cfg.png.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from score_sde.experiment import autoencoder, builders, config_files, restore, training  # noqa: E402
from score_sde.io import datasets  # noqa: E402
from score_sde.metrics import digits_classifier as dc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AE_CONFIG, LATENT_CONFIG = "configs/digits/autoencoder.py", "configs/digits/latent_dit.py"
TIMED = {"DDPM++ (main job)": "configs/digits/ddpmpp_vp_small.py", "DiT": "configs/digits/dit.py",
         "latent DiT (incl. encoding)": LATENT_CONFIG}
QUICK_TIMED = {"DDPM++ (main job)": {"model.nf": 8, "model.ch_mult": (1,),
                                     "model.attn_resolutions": ()},
               "DiT": {"model.hidden_size": 16, "model.depth": 1, "model.num_heads": 2}}
QUICK_AE = {"autoencoder.ch": 8, "autoencoder.num_groups": 4, "autoencoder.n_iters": 20,
            "autoencoder.batch_size": 16, "autoencoder.snapshot_freq": 20,
            "autoencoder.eval_freq": 20, "autoencoder.scale_num_images": 64}
QUICK_LATENT = {"model.hidden_size": 16, "model.depth": 1, "model.num_heads": 2,
                "model.num_scales": 10, "training.n_iters": 4, "training.snapshot_freq": 4,
                "training.snapshot_freq_for_preemption": 0, "training.eval_freq": 4,
                "training.batch_size": 8, "training.snapshot_sampling": False}


def _flags(overrides: dict) -> list[str]:
  return [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
          for k, v in overrides.items()]


def load_config(config_file: str, overrides: dict):
  config = config_files.load_config_file(os.path.join(ROOT, config_file), "config")
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def run_overrides(runs_dir: str, quick: bool) -> tuple[dict, dict]:
  ae = dict(QUICK_AE if quick else {})
  latent = {"latent.autoencoder_workdir": os.path.join(runs_dir, "digits_ae"),
            **(QUICK_LATENT if quick else {})}
  return ae, latent


def train_runs(runs_dir: str, quick: bool) -> None:
  ae, latent = run_overrides(runs_dir, quick)
  for config_file, workdir, mode, overrides in (
      (AE_CONFIG, "digits_ae", "train_autoencoder", ae),
      (LATENT_CONFIG, "digits_latent_dit", "train", latent)):
    cmd = [sys.executable, "main.py", "--config", config_file, "--workdir",
           os.path.join(runs_dir, workdir), "--mode", mode, *_flags(overrides)]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"  {mode}: {time.time() - start:.0f} s", flush=True)


def time_train_steps(runs_dir: str, steps: int, rounds: int, quick: bool) -> list[dict]:
  """Median ms per compiled train step of each TIMED config, in alternating rounds."""
  _, latent = run_overrides(runs_dir, quick)
  steppers = {}
  for name, config_file in TIMED.items():
    fields = latent if config_file == LATENT_CONFIG else QUICK_TIMED[name] if quick else {}
    exp = builders.build_experiment(load_config(config_file, fields))
    o = exp.training
    step = jax.jit(training.make_train_step(exp.train_loss, exp.optimizer, o.ema_rate,
                                            o.ema_warmup), donate_argnums=0)
    with exp.dataset(split="train", batch_size=o.batch_size, shuffle_seed=0) as it:
      b = next(it)
    batch = jax.tree.map(lambda a: jnp.asarray(a)[None], exp.model_batch(b["image"], b["label"]))
    state = exp.init_state()
    state, _ = step(state, batch, exp.train_key)  # compile
    jax.block_until_ready(state)
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    steppers[name] = [step, state, batch, exp.train_key, params, []]
  for _ in range(rounds):
    for name, s in steppers.items():
      step, state, batch, key = s[:4]
      start = time.perf_counter()
      for _ in range(steps):
        state, _ = step(state, batch, key)
      jax.block_until_ready(state)
      s[1] = state
      s[5].append((time.perf_counter() - start) / steps * 1e3)
  load = os.getloadavg()[0]
  rows = [{"model": name, "params": s[4], "ms": float(np.median(s[5])),
           "spread": float(np.ptp(s[5]) / 2), "load": load} for name, s in steppers.items()]
  for r in rows:
    print(f"{r['model']:30s} {r['params']:8d} params  {r['ms']:7.1f} ms/step ± {r['spread']:.1f}"
          f"  (load {load:.2f})", flush=True)
  return rows


def _classifier_and_reference():
  classifier = dc.train_digits_classifier(seed=0, image_size=16)
  (x_train, _), (x_test, _) = dc.train_test_split(*dc.load_digits_images(16))
  return classifier, x_train, x_test, dc.digits_stats(x_test, classifier)


def measure_autoencoder(runs_dir: str, classifier, x_train, reference) -> dict:
  out_dir = os.path.join(runs_dir, "digits_ae", "autoencoder")
  spec = autoencoder.read_spec(out_dir)
  state = autoencoder_state(out_dir, spec)
  test, _ = datasets.digits_split("test", 16)
  x = test.astype(np.float32) / 255.0
  scaled = x * 2 - 1 if spec["data"]["centered"] else x
  x_hat = np.asarray(jax.jit(autoencoder.reconstruct_fn(spec))(state.params["autoencoder"],
                                                                jnp.asarray(scaled)))
  x_hat = np.clip((x_hat + 1) / 2 if spec["data"]["centered"] else x_hat, 0.0, 1.0)
  mse = np.mean(np.square(x_hat - x), axis=(1, 2, 3))
  scale = json_file(os.path.join(out_dir, autoencoder.SCALE_FILE))
  result = {"step": int(state.step), "psnr": float(np.mean(10 * np.log10(1 / np.maximum(mse, 1e-12)))),
            "l1": float(np.mean(np.abs(x_hat - x))),
            "rfdd": float(dc.frechet_digits_distance(x_hat, reference, classifier).value),
            "train_fdd": float(dc.frechet_digits_distance(x_train, reference, classifier).value),
            "scale_factor": float(scale["scale_factor"]), "num_test": len(x)}
  print(result, flush=True)
  return result


def json_file(path: str) -> dict:
  import json
  with open(path) as f:
    return json.load(f)


def autoencoder_state(out_dir: str, spec: dict):
  from score_sde.io import checkpointing
  ckpts = checkpointing.TrainCheckpoints(out_dir, read_only=True)
  state = ckpts.restore_latest(autoencoder.abstract_state(spec))
  ckpts.close()
  return state


def measure_cfg(runs_dir: str, weights: list[float], num_samples: int, seeds: int, quick: bool,
                classifier, reference) -> tuple[list[dict], dict]:
  _, latent = run_overrides(runs_dir, quick)
  rows, grids, params = [], {}, None
  for w in weights:
    config = load_config(LATENT_CONFIG, {**latent, "sampling.guidance_scale": float(w)})
    exp = builders.build_experiment(config)
    if params is None:
      params = restore.latest_params(exp, os.path.join(runs_dir, "digits_latent_dit"))[1]
    fdds, accuracies = [], []
    for seed in range(seeds):
      key = jax.random.fold_in(exp.sample_key, 2000 + seed)
      x, labels = exp.generate(key, params, num_samples)
      images = np.clip(np.asarray(exp.inverse_scaler(x)), 0.0, 1.0)
      fdds.append(dc.frechet_digits_distance(images, reference, classifier).value)
      predicted = np.argmax(dc.classify_and_embed(images, classifier)[0], axis=-1)
      accuracies.append(float(np.mean(predicted == np.asarray(labels))))
      if seed == 0:
        grids[w] = images[:20]
    rows.append({"w": w, "fdd": float(np.mean(fdds)), "fdd_spread": float(np.ptp(fdds) / 2),
                 "accuracy": float(np.mean(accuracies)),
                 "accuracy_spread": float(np.ptp(accuracies) / 2)})
    print(f"w {w:4.1f}  FDD {np.mean(fdds):7.2f} ± {np.ptp(fdds) / 2:.2f}  class accuracy "
          f"{np.mean(accuracies):.3f} ± {np.ptp(accuracies) / 2:.3f}", flush=True)
  return rows, grids


def replace_block(doc: str, name: str, table: str) -> None:
  text = open(doc).read()
  pattern = rf"<!-- {name}:begin -->.*<!-- {name}:end -->"
  if not re.search(pattern, text, flags=re.S):
    raise ValueError(f"{doc} has no <!-- {name}:begin --> ... <!-- {name}:end --> block.")
  text = re.sub(pattern, lambda _: f"<!-- {name}:begin -->\n{table}\n<!-- {name}:end -->", text,
                flags=re.S)
  with open(doc, "w") as f:
    f.write(text)


def plot(rows: list[dict], grids: dict, figure: str) -> None:
  fig = plt.figure(figsize=(9, 4.2))
  ax = fig.add_subplot(1, 2, 1)
  ws = [r["w"] for r in rows]
  ax.errorbar(ws, [r["fdd"] for r in rows], yerr=[r["fdd_spread"] for r in rows], marker="o",
              capsize=3, color="C0")
  ax.set_xlabel("guidance weight w")
  ax.set_ylabel("Fréchet Digits Distance", color="C0")
  twin = ax.twinx()
  twin.errorbar(ws, [r["accuracy"] for r in rows], yerr=[r["accuracy_spread"] for r in rows],
                marker="s", capsize=3, color="C1")
  twin.set_ylabel("class accuracy", color="C1")
  ax.grid(alpha=0.3)
  ax = fig.add_subplot(1, 2, 2)
  framed = lambda im: np.pad(im, 1, constant_values=0.5)  # 18x18 cells with a gray frame
  rows_img = [np.concatenate([framed(im) for im in grids[w][:10, :, :, 0]], axis=1) for w in ws]
  ax.imshow(np.concatenate(rows_img, axis=0), cmap="gray", vmin=0, vmax=1)
  ax.set_yticks([9 + 18 * i for i in range(len(ws))], [f"w={w:g}" for w in ws])
  ax.set_xticks([9 + 18 * i for i in range(10)], [str(i) for i in range(10)])
  ax.set_title("latent DiT samples, classes 0-9")
  fig.tight_layout()
  os.makedirs(os.path.dirname(figure) or ".", exist_ok=True)
  fig.savefig(figure, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default=None)
  parser.add_argument("--parts", default="timing,autoencoder,cfg")
  parser.add_argument("--weights", default="0,0.5,1,2,4")
  parser.add_argument("--num_samples", type=int, default=500)
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--timing_steps", type=int, default=20)
  parser.add_argument("--timing_rounds", type=int, default=5)
  parser.add_argument("--skip_training", action="store_true")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "dit_latent.md"))
  parser.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "latent_dit_cfg.png"))
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  if args.quick:
    import tempfile
    args.runs = args.runs or tempfile.mkdtemp(prefix="dit_latent_")
    args.num_samples, args.seeds, args.timing_steps, args.timing_rounds = 20, 1, 2, 1
    args.weights = "0,2"
    args.doc, args.figure = os.path.join(args.runs, "dit_latent.md"), os.path.join(args.runs, "f.png")
    with open(args.doc, "w") as f:
      f.write("".join(f"<!-- {n}:begin -->\n<!-- {n}:end -->\n" for n in ("timing", "autoencoder", "cfg")))
  runs_dir = os.path.abspath(args.runs or os.path.join(ROOT, "runs"))
  parts = args.parts.split(",")
  if not args.skip_training and ("cfg" in parts or "autoencoder" in parts or "timing" in parts):
    train_runs(runs_dir, args.quick)
  command = "PYTHONPATH=. python experiments/dit_latent_study.py " + " ".join(sys.argv[1:])
  if "timing" in parts:
    rows = time_train_steps(runs_dir, args.timing_steps, args.timing_rounds, args.quick)
    table = [f"`{command}` (load average {rows[0]['load']:.2f} when the timing ended)", "",
             "| model | parameters | train step, batch 32 (ms, median ± half-range of rounds) |",
             "|---|---|---|"]
    table += [f"| {r['model']} | {r['params']:,} | {r['ms']:.1f} ± {r['spread']:.1f} |" for r in rows]
    replace_block(args.doc, "timing", "\n".join(table))
  classifier = x_train = reference = None
  if "autoencoder" in parts or "cfg" in parts:
    classifier, x_train, _, reference = _classifier_and_reference()
  if "autoencoder" in parts:
    r = measure_autoencoder(runs_dir, classifier, x_train, reference)
    table = "\n".join([
        f"`{command}`", "",
        "| autoencoder step | test PSNR (dB) | test L1 ([0, 1] pixels) | rFDD (reconstructions vs "
        "test digits) | FDD of the training digits | latent scale factor |", "|---|---|---|---|---|---|",
        f"| {r['step']} | {r['psnr']:.2f} | {r['l1']:.4f} | {r['rfdd']:.2f} | {r['train_fdd']:.2f} "
        f"| {r['scale_factor']:.4f} |"])
    replace_block(args.doc, "autoencoder", table)
  if "cfg" in parts:
    weights = [float(w) for w in args.weights.split(",")]
    rows, grids = measure_cfg(runs_dir, weights, args.num_samples, args.seeds, args.quick,
                              classifier, reference)
    table = [f"`{command}` ({args.num_samples} samples x {args.seeds} seeds per weight)", "",
             "| w | FDD (mean ± half-range) | class accuracy (mean ± half-range) |", "|---|---|---|"]
    table += [f"| {r['w']:g} | {r['fdd']:.2f} ± {r['fdd_spread']:.2f} | {r['accuracy']:.3f} ± "
              f"{r['accuracy_spread']:.3f} |" for r in rows]
    replace_block(args.doc, "cfg", "\n".join(table))
    plot(rows, grids, args.figure)


if __name__ == "__main__":
  main()
