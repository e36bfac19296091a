"""Training parity with the PyTorch reference: one configuration, the digits, both codebases.

  PYTHONPATH=. python experiments/train_parity.py --reference /path/to/score_sde_pytorch \\
      --torch_python /path/to/venv-with-torch/bin/python [--write]
  PYTHONPATH=. python experiments/train_parity.py --quick      # smoke test; no torch needed

Trains, in one run and one after the other, the same NCSN++ (VE SDE, continuous time; the fields
of configs/ve/cifar10_ncsnpp_continuous.py: FIR, BigGAN res blocks, residual input skips, Fourier
embedding, dropout 0.1) shrunk to nf 32, ch_mult (1, 2), one res block, attention at 4x4, on
scikit-learn's 8x8 digits (grey levels v in 0..16 stored as round(v 255 / 16), uniformly
dequantized; no flips), batch 64, Adam lr 5e-4 with 100 warm-up steps, gradient clipping 1,
EMA 0.999 with the reference's warm-up, --steps steps:
  - the reference (yang-song/score_sde_pytorch, the checkout at --reference, never copied here):
    a driver written into the work folder runs, under --torch_python, its own `models.ncsnpp`
    (through `models.utils.create_model`), `losses.get_optimizer` / `optimization_manager` /
    `get_step_fn`, `sde_lib.VESDE` and `models.ema.ExponentialMovingAverage`, in the loop of its
    run_lib.train (the loss logged every 50 steps, the EMA's loss on a test batch every
    eval_freq = 100 steps, a checkpoint at the end). Its `op` package compiles CUDA kernels at
    import; the driver puts a pure-torch `upfirdn2d` first on sys.path instead. It inherits the
    environment (OMP_NUM_THREADS: under load, torch's 2 threads lose 5-7x; docs/train_parity.md).
  - this codebase: `score_sde.experiment.train.train` with the same config.
Both read this codebase's digits split (1500 train images; the first --eval_images of the 297
test images), fed to the reference as .npy arrays (NCHW). Wall time of each training is measured
around it (model creation to saved checkpoint; imports excluded); the load average is printed
before, between and after.

One likelihood code judges both: the reference's EMA weights are converted with
`score_sde.io.convert.from_pytorch_checkpoint` and each model's test bits/dim is computed by
`score_sde.samplers.likelihood.bits_per_dim` (Dopri5, rtol = atol = --tol, per-sample step
control) with the same key, so both see the same dequantization noise and Hutchinson probes. The
table gives each mean bits/dim with its standard error and the paired difference (reference -
ours) with its standard error. ``--write`` puts it between the markers of docs/train_parity.md.
``--quick``: 3 steps at nf 8, the likelihood of 2 images at tol 1e-3; without --reference the
reference is skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.ve import cifar10_ncsnpp_continuous  # noqa: E402
from score_sde.experiment import builders, train  # noqa: E402
from score_sde.io import convert, datasets, torch_pickle  # noqa: E402
from score_sde.samplers import common, likelihood  # noqa: E402

DOC = os.path.join(ROOT, "docs", "train_parity.md")
BEGIN, END = "<!-- train_parity:begin -->", "<!-- train_parity:end -->"

# The reference's `op.upfirdn2d`, written from its definition: upsample by zero insertion, pad
# (negative pads crop), correlate with the flipped kernel (a true convolution), keep every
# down-th sample. Only `upfirdn2d` is imported by the reference's models.
OP_INIT = '''
import torch
import torch.nn.functional as F


def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
  n, c, h, w = input.shape
  kh, kw = kernel.shape
  x = input.reshape(n * c, 1, h, w)
  if up > 1:
    x = F.pad(x.reshape(n * c, 1, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape(n * c, 1, h * up, w * up)
  p0, p1 = pad
  x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
  x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
  weight = torch.flip(kernel, [0, 1]).reshape(1, 1, kh, kw).to(x.dtype)
  x = F.conv2d(x, weight)[:, :, ::down, ::down]
  return x.reshape(n, c, x.shape[2], x.shape[3])
'''

# Runs the reference's training as its run_lib.train does, on the arrays our side saved.
DRIVER = '''
import json
import sys
import time
import types

work, reference = sys.argv[1], sys.argv[2]
sys.path[:0] = [work, reference]  # our `op` shadows the reference's CUDA one
import numpy as np
import torch

import losses
import sde_lib
from models import ncsnpp  # noqa: F401  (registers the model)
from models import utils as mutils
from models.ema import ExponentialMovingAverage


def namespace(tree):
  return types.SimpleNamespace(**{k: namespace(v) if isinstance(v, dict) else v
                                  for k, v in tree.items()})


spec = json.load(open(f"{work}/config.json"))
config = namespace(spec)
config.device = torch.device("cpu")
train = torch.from_numpy(np.load(f"{work}/train.npy")).float() / 255.0  # [N, C, H, W] on the grid
test = torch.from_numpy(np.load(f"{work}/test.npy")).float() / 255.0
torch.manual_seed(config.seed)
rng = np.random.default_rng(config.seed)
order, position = rng.permutation(len(train)), 0


def next_batch(images, size):
  global order, position
  if position + size > len(order):
    order, position = rng.permutation(len(images)), 0
  x = images[order[position:position + size]]
  position += size
  return (torch.rand_like(x) + 255.0 * x) / 256.0  # the reference's uniform dequantization


start = time.perf_counter()
score_model = mutils.create_model(config)
ema = ExponentialMovingAverage(score_model.parameters(), decay=config.model.ema_rate)
optimizer = losses.get_optimizer(config, score_model.parameters())
state = dict(optimizer=optimizer, model=score_model, ema=ema, step=0)
sde = sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max,
                    N=config.model.num_scales)
t = config.training
train_step = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                reduce_mean=t.reduce_mean, continuous=t.continuous,
                                likelihood_weighting=t.likelihood_weighting)
eval_step = losses.get_step_fn(sde, train=False, optimize_fn=None, reduce_mean=t.reduce_mean,
                               continuous=t.continuous, likelihood_weighting=t.likelihood_weighting)
eval_rng = np.random.default_rng(config.seed + 1)
for step in range(1, t.n_iters + 1):
  loss = train_step(state, next_batch(train, t.batch_size))
  if step % t.log_freq == 0 or step == t.n_iters:
    print(f"reference step {step}: loss {loss.item():.4f}", flush=True)
  if step % t.eval_freq == 0:
    x = test[eval_rng.choice(len(test), t.batch_size)]
    eval_step(state, (torch.rand_like(x) + 255.0 * x) / 256.0)
torch.save(dict(model=score_model.state_dict(), ema=ema.state_dict(), step=state["step"]),
           f"{work}/checkpoint.pth")
print(json.dumps({"wall_s": time.perf_counter() - start, "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
'''


def make_config(steps: int, quick: bool):
  """The one configuration both sides train (NCSN++ fields of the reference's CIFAR-10 config)."""
  config = cifar10_ncsnpp_continuous.get_config()
  config.data.update(dataset="digits", image_size=8, num_channels=1, random_flip=False,
                     centered=False, uniform_dequantization=True)
  config.model.update(nf=8 if quick else 32, ch_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(4,))
  config.optim.update(lr=5e-4, warmup=100, grad_clip=1.0)
  config.training.update(batch_size=64, n_iters=steps, n_jitted_steps=math.gcd(steps, 5),
                         log_freq=50, eval_freq=100, snapshot_freq=steps,
                         snapshot_freq_for_preemption=steps, snapshot_sampling=False)
  return config


def reference_spec(config) -> dict:
  """The config fields the reference reads, as JSON (tuples become lists)."""
  fields = {"model": config.model, "data": config.data, "optim": config.optim,
            "training": config.training}
  spec = {name: {k: v for k, v in group.to_dict().items() if v is None or
                 isinstance(v, (bool, int, float, str, tuple, list))}
          for name, group in fields.items()}
  spec["seed"] = config.seed
  return spec


def load_line(label: str) -> str:
  one, five, fifteen = os.getloadavg()
  line = f"load average {label}: {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"
  print(line, flush=True)
  return line


def train_reference(args, config, work: str) -> tuple[float, dict, dict]:
  """Wall seconds of the reference's training, the driver's report and its EMA parameters,
  converted to this codebase's tree."""
  os.makedirs(os.path.join(work, "op"))
  with open(os.path.join(work, "op", "__init__.py"), "w") as f:
    f.write(OP_INIT)
  with open(os.path.join(work, "driver.py"), "w") as f:
    f.write(DRIVER)
  with open(os.path.join(work, "config.json"), "w") as f:
    json.dump(reference_spec(config), f)
  size = config.data.image_size
  for split in ("train", "test"):
    np.save(os.path.join(work, f"{split}.npy"),
            datasets.digits_split(split, size)[0].transpose(0, 3, 1, 2))  # NHWC -> NCHW
  print(f"reference: {args.torch_python} driver.py ({work})", flush=True)
  with subprocess.Popen([args.torch_python, os.path.join(work, "driver.py"), work,
                         os.path.abspath(args.reference)], stdout=subprocess.PIPE, text=True) as run:
    for line in run.stdout:  # the losses as they come; the last line is the driver's report
      if not line.startswith("{"):
        print(line, end="", flush=True)
      last = line
  if run.returncode != 0:
    raise SystemExit(f"the reference's training failed (exit {run.returncode})")
  info = json.loads(last)
  commit = subprocess.run(["git", "-C", args.reference, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
  info["commit"] = commit.stdout.strip() if commit.returncode == 0 else "unknown commit"
  print(f"reference: {info}", flush=True)
  checkpoint = torch_pickle.load_torch_file(os.path.join(work, "checkpoint.pth"))
  params = convert.from_pytorch_checkpoint(checkpoint, **builders.conversion_kwargs(config))
  return info["wall_s"], info, params["ema_params"]


def train_ours(config, workdir: str) -> tuple[float, dict]:
  """Wall seconds of this codebase's training and its EMA parameters."""
  start = time.perf_counter()
  state = train.train(config, workdir)
  jax.block_until_ready(state.ema_params)
  return time.perf_counter() - start, jax.device_get(state.ema_params)


def bits_per_dim(config, ema_params, images: np.ndarray, tol: float, seed: int) -> np.ndarray:
  """Per-image test bits/dim of ``ema_params``; the same key gives both models the same noise."""
  exp = builders.build_experiment(config)
  model = common.as_model(exp.unconditional_model(jax.tree.map(jnp.asarray, ema_params)))
  bpd, _ = likelihood.bits_per_dim(jax.random.PRNGKey(seed), model, exp.sde, jnp.asarray(images),
                                   centered=config.data.centered, rtol=tol, atol=tol)
  return np.asarray(bpd, np.float64)


def mean_se(values: np.ndarray) -> str:
  se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
  return f"{values.mean():.4f} ± {se:.4f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", default=None, help="checkout of yang-song/score_sde_pytorch")
  parser.add_argument("--torch_python", default=sys.executable,
                      help="a Python with torch (and numpy) that runs the reference's training")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--eval_images", type=int, default=51, help="first N of the 297 test digits")
  parser.add_argument("--tol", type=float, default=1e-5, help="likelihood rtol = atol")
  parser.add_argument("--seed", type=int, default=0, help="key of dequantization and probes")
  parser.add_argument("--train_seeds", default="0",
                      help="comma-separated config.seed values: each side trains once per seed "
                           "(initialisation, data order, noise)")
  parser.add_argument("--workdir", default=None,
                      help="where both runs go and stay (default: a temporary folder, deleted)")
  parser.add_argument("--write", action="store_true", help="put the table in docs/train_parity.md")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: 3 steps at nf 8, 2 images, tol 1e-3")
  args = parser.parse_args()
  if args.quick:
    args.steps, args.eval_images, args.tol = 3, 2, 1e-3
  config = make_config(args.steps, args.quick)
  if args.workdir:
    os.makedirs(args.workdir, exist_ok=True)
    run(args, config, args.workdir)
  else:
    with tempfile.TemporaryDirectory(prefix="train_parity_") as workdir:
      run(args, config, workdir)


def run(args, config, workdir: str) -> None:
  """Trains both sides into ``workdir`` once per training seed, prints the table and, with
  --write, puts it in the doc."""
  test = datasets.digits_split("test", config.data.image_size)[0][:args.eval_images]
  test = test.astype(np.float32) / 255.0

  loads = [load_line("at start")]
  walls, bpds, info = {}, {}, {}
  seeds = [int(s) for s in args.train_seeds.split(",")]
  for seed in seeds:
    config.seed = seed
    params = {}
    if args.reference:
      walls["reference", seed], info, params["reference"] = train_reference(
          args, config, os.path.join(workdir, f"reference_seed{seed}"))
      loads.append(load_line(f"after the reference's training, seed {seed}"))
    else:
      print("reference: skipped (no --reference)", flush=True)
    walls["ours", seed], params["ours"] = train_ours(config, os.path.join(workdir, f"ours_seed{seed}"))
    loads.append(load_line(f"after our training, seed {seed}"))
    for name, p in params.items():
      bpds[name, seed] = bits_per_dim(config, p, test, args.tol, args.seed)

  m = config.model
  lines = [
      f"NCSN++ VE continuous, nf {m.nf}, ch_mult {tuple(m.ch_mult)}, {m.num_res_blocks} res block, "
      f"attention at {tuple(m.attn_resolutions)}, FIR, BigGAN blocks, residual input skips, "
      f"dropout {m.dropout}; digits 8x8 uniformly dequantized, batch {config.training.batch_size}, "
      f"lr {config.optim.lr}, warm-up {config.optim.warmup}, grad clip {config.optim.grad_clip}, "
      f"EMA {m.ema_rate} with warm-up, {args.steps} steps, training seeds {seeds}. Test "
      f"bits/dim of the EMA weights on "
      f"{len(test)} held-out digits by this codebase's likelihood (Dopri5, tol {args.tol}), the "
      f"same dequantization noise and probes for both; mean ± standard error."
      + (f" Reference: score_sde_pytorch {info['commit']}, torch {info['torch']}, "
         f"{info['threads']} threads." if info else ""),
      *[f"- {line}" for line in loads],
      "",
      "| codebase | training seed | training wall s | test bits/dim |",
      "|---|---|---|---|"]
  for name, seed in bpds:
    lines.append(f"| {name} | {seed} | {walls[name, seed]:.1f} | {mean_se(bpds[name, seed])} |")
  if args.reference:
    diffs = np.array([np.mean(bpds["reference", s] - bpds["ours", s]) for s in seeds])
    ratios = [walls["ours", s] / walls["reference", s] for s in seeds]
    lines.append("")
    lines += [f"- seed {s}: paired difference, reference - ours, "
              f"{mean_se(bpds['reference', s] - bpds['ours', s])} bits/dim; wall time ours / "
              f"reference {r:.2f}" for s, r in zip(seeds, ratios)]
    lines.append(f"- over the {len(seeds)} training seed(s): mean difference, reference - ours "
                 f"(± standard error across seeds) {mean_se(diffs)} bits/dim; wall time ours / "
                 f"reference {np.mean(ratios):.2f}")
  table = "\n".join(lines)
  print(table)
  if args.write:
    write_doc(table, " ".join(["PYTHONPATH=. python experiments/train_parity.py"] + sys.argv[1:]))


def write_doc(table: str, command: str) -> None:
  text = open(DOC).read()
  section = f"{BEGIN}\n```\n{command}\n```\n\n{table}\n{END}"
  pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
  if not pattern.search(text):
    raise SystemExit(f"{DOC} has no {BEGIN} ... {END} markers")
  with open(DOC, "w") as f:
    f.write(pattern.sub(lambda _: section, text))
  print("wrote", DOC)


if __name__ == "__main__":
  main()
