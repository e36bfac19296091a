"""Performance side by side with the PyTorch reference, in one run: the table of issue 15.

  PYTHONPATH=. python experiments/bench_reference.py --reference /path/to/score_sde_pytorch \\
      --torch_python /path/to/venv-with-torch/bin/python [--digits_workdir runs/digits] [--write]
  PYTHONPATH=. python experiments/bench_reference.py --quick    # smoke test; no torch needed

The model is the tiny NCSN++ (VE SDE, continuous time; configs/ve/cifar10_ncsnpp_continuous.py
shrunk to nf 32, ch_mult (1, 2), one res block, attention at 16), 32x32x3, at its initialisation.
The reference (yang-song/score_sde_pytorch at --reference, never copied here) runs first, in a
driver written into a temporary folder and run under --torch_python: its `models.ncsnpp` (with a
pure-torch `upfirdn2d` in place of its CUDA extension), `losses.get_step_fn` (Adam, warm-up, grad
clipping, EMA), `sampling.get_pc_sampler` and `likelihood.get_likelihood_fn`. Its initial weights
are converted (`score_sde.io.convert`) so that both sides solve the same likelihood ODE. Then this
codebase times the same cases. Rows:
  - train step (forward, backward, Adam, EMA) at batch 8 and 64, with FLOP from XLA's cost
    analysis of the compiled step and the utilisation of this machine's float32 GEMM peak (a
    2048^2 matmul, measured here); timed in --rounds rounds in which the reference's step (its
    driver kept running) and ours alternate, since this machine's speed drifts by up to ±25 %
    between runs an hour apart;
  - one score evaluation, batch 8;
  - the PC sampler, N = 50, reverse diffusion + Langevin (100 NFE), batch 8;
  - the likelihood of 2 images at rtol = atol = 1e-5 (NFE and seconds);
  - with --digits_workdir (a trained digits run, e.g. the README's main job): the likelihood NFE
    of --digits_images test digits at 1e-5, ours (Dopri5, both step controls) against the
    reference's solver (scipy RK45 on the same field: experiments/likelihood_nfe.py);
  - the sampler overhead, wall / (NFE x one score evaluation), of every sampler family on this
    model (ours only; the score evaluation is timed before and after each run), and the sampler's
    own work per NFE (its wall with the network replaced by an elementwise score) over one
    evaluation.
Times are medians of --repeats runs after a warm-up (the samplers: of --sampler_repeats). The load
average is printed before and after each side. ``--write`` puts the table between the markers of
docs/performance.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from statistics import median

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_device import matmul_peak, median_seconds  # noqa: E402  (experiments/ is sys.path[0])
from bench_samplers import overhead  # noqa: E402
from train_parity import OP_INIT, load_line, reference_spec  # noqa: E402
from configs.ve import cifar10_ncsnpp_continuous  # noqa: E402
from score_sde.diffusion import parametrization  # noqa: E402
from score_sde.diffusion import sde as sde_lib  # noqa: E402
from score_sde.experiment import builders, config_files, training  # noqa: E402
from score_sde.io import convert, torch_pickle  # noqa: E402
from score_sde.samplers import SAMPLERS, common, likelihood  # noqa: E402

DOC = os.path.join(ROOT, "docs", "performance.md")
BEGIN, END = "<!-- bench_reference:begin -->", "<!-- bench_reference:end -->"
PC_OPTIONS = dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16)
# (label, name in SAMPLERS, options): every family once on the tiny model, batch 8.
OVERHEAD_RUNS = [
    ("PC reverse diffusion + Langevin", "pc", PC_OPTIONS),
    ("PC Euler-Maruyama", "pc", dict(predictor="euler_maruyama", corrector="none")),
    ("DDIM, 50 steps", "ddim", dict(num_steps=50)),
    ("DPM-Solver++(2M), 20 steps", "dpm_solver", dict(num_steps=20)),
    ("EDM Heun, 18 steps", "edm", dict(num_steps=18)),
    ("probability-flow ODE, Dopri5, tol 1e-3", "ode", dict(rtol=1e-3, atol=1e-3, solver="dopri5")),
]

# Times the reference on the same cases; prints one JSON line at the end.
DRIVER = '''
import json
import statistics
import sys
import time
import types

work, reference, repeats, quick = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
sys.path[:0] = [work, reference]  # our `op` shadows the reference's CUDA one
import numpy as np
import torch

import likelihood
import losses
import sampling
import sde_lib
from models import ncsnpp  # noqa: F401  (registers the model)
from models import utils as mutils
from models.ema import ExponentialMovingAverage


def namespace(tree):
  return types.SimpleNamespace(**{k: namespace(v) if isinstance(v, dict) else v
                                  for k, v in tree.items()})


def median_time(fn, n):
  fn()
  times = []
  for _ in range(n):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


config = namespace(json.load(open(f"{work}/config.json")))
config.device = torch.device("cpu")
torch.manual_seed(0)
model = mutils.create_model(config)
torch.save(model.state_dict(), f"{work}/init.pth")
m = config.model
sde = sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
size, channels = config.data.image_size, config.data.num_channels
out = {"torch": torch.__version__, "threads": torch.get_num_threads()}

score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
x8 = torch.rand(8, channels, size, size)
with torch.no_grad():
  out["score_eval_s"] = median_time(lambda: score_fn(x8, torch.full((8,), 0.5)), 3 * repeats)

ema = ExponentialMovingAverage(model.parameters(), decay=m.ema_rate)
optimizer = losses.get_optimizer(config, model.parameters())
state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
t = config.training
step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                             reduce_mean=t.reduce_mean, continuous=t.continuous,
                             likelihood_weighting=t.likelihood_weighting)
model.eval()

sde50 = sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=config.pc_steps)
sampler = sampling.get_pc_sampler(sde50, (8, channels, size, size), sampling.ReverseDiffusionPredictor,
                                  sampling.LangevinCorrector, lambda v: v, snr=0.16, n_steps=1,
                                  continuous=True, denoise=True, eps=1e-5, device="cpu")
start = time.perf_counter()
_, nfe = sampler(model)
out["pc_s"], out["pc_nfe"] = time.perf_counter() - start, int(nfe)

images = torch.from_numpy(np.load(f"{work}/likelihood_images.npy"))
likelihood_fn = likelihood.get_likelihood_fn(sde, lambda v: v, rtol=config.tol, atol=config.tol)
torch.manual_seed(1)
start = time.perf_counter()
bpd, _, nfe = likelihood_fn(model, images)
out["likelihood_s"], out["likelihood_nfe"] = time.perf_counter() - start, int(nfe)
out["likelihood_bpd"] = [float(v) for v in bpd]
print(json.dumps(out), flush=True)

# Then train steps on request, interleaved with ours: a batch size per stdin line -> median seconds.
model.train()
for line in sys.stdin:
  x = torch.rand(int(line), channels, size, size)
  print(median_time(lambda: step_fn(state, x), repeats), flush=True)
'''


def tiny_config(nf: int = 32, image_size: int = 32):
  """The tiny NCSN++: attention at the second of its two resolutions (16 for 32x32)."""
  config = cifar10_ncsnpp_continuous.get_config()
  config.model.update(nf=nf, ch_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(image_size // 2,))
  config.data.update(image_size=image_size)
  return config


class Reference:
  """The reference's driver in a temporary folder: ``info`` holds its measurements and ``params``
  (its initial weights in this codebase's tree); then ``train_step_seconds(batch)`` times its train
  step on request, so that its steps and ours alternate within minutes."""

  def __init__(self, args, config, tol: float, images: np.ndarray):
    self._work = tempfile.TemporaryDirectory(prefix="bench_reference_")
    self.info, self._driver = start_reference(args, config, self._work.name, tol, images)

  def train_step_seconds(self, batch: int) -> float:
    self._driver.stdin.write(f"{batch}\n")
    self._driver.stdin.flush()
    return float(self._driver.stdout.readline())

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._driver.stdin.close()
    self._driver.wait()
    self._work.cleanup()


def start_reference(args, config, work: str, tol: float, images: np.ndarray):
  """(the driver's measurements plus ``params``, the running driver)."""
  os.makedirs(os.path.join(work, "op"))
  with open(os.path.join(work, "op", "__init__.py"), "w") as f:
    f.write(OP_INIT)
  with open(os.path.join(work, "driver.py"), "w") as f:
    f.write(DRIVER)
  spec = reference_spec(config)
  spec.update(pc_steps=50, tol=tol)
  with open(os.path.join(work, "config.json"), "w") as f:
    json.dump(spec, f)
  np.save(os.path.join(work, "likelihood_images.npy"), images.transpose(0, 3, 1, 2))  # NCHW
  driver = subprocess.Popen([args.torch_python, os.path.join(work, "driver.py"), work,
                             os.path.abspath(args.reference), str(args.repeats),
                             str(int(args.quick))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  line = driver.stdout.readline()
  if not line:
    raise SystemExit(f"The reference's driver stopped (exit {driver.wait()}); see its error above.")
  info = json.loads(line)
  commit = subprocess.run(["git", "-C", args.reference, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
  info["commit"] = commit.stdout.strip() if commit.returncode == 0 else "unknown commit"
  state_dict = torch_pickle.load_torch_file(os.path.join(work, "init.pth"))
  info["params"] = convert.from_pytorch_state_dict(
      {k: np.asarray(v) for k, v in state_dict.items()}, **builders.conversion_kwargs(config))
  return info, driver


def train_steppers(config, batches, chunks=None) -> dict:
  """{batch: (run one step, FLOP)} of this codebase's compiled training step; ``chunks`` gives
  config.model.batch_chunk per batch (default: the whole batch)."""
  out = {}
  for batch, chunk in zip(batches, chunks or [0] * len(batches)):
    config.training.batch_size = batch
    config.model.batch_chunk = chunk
    exp = builders.build_experiment(config)
    step = training.make_train_step(exp.train_loss, exp.optimizer, exp.training.ema_rate,
                                    exp.training.ema_warmup)
    state = exp.init_state()
    images = {"image": jax.random.uniform(jax.random.PRNGKey(0), (1, batch, *exp.image_shape))}
    compiled = jax.jit(step).lower(state, images, exp.train_key).compile()
    cost = compiled.cost_analysis()
    flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
    out[batch] = (_stepper(compiled, state, images, exp.train_key), flops)
  config.model.batch_chunk = 0
  return out


def _stepper(compiled, state, images, key):
  """run() -> metrics: one step of ``compiled`` from the state the previous one reached."""
  carry = {"state": state}

  def run():
    carry["state"], metrics = compiled(carry["state"], images, key)
    return metrics

  return run


def interleaved_train_steps(ref, ours: dict, chunked: dict, rounds: int, repeats: int) -> dict:
  """{(batch, chunk or 0): [(ours s, reference s or None) per round]}: each round times, per
  batch, the reference's step, then ours whole and in chunks (each a median of ``repeats``), so
  that the ratios compare steps taken within a minute of each other."""
  times = {}
  for _ in range(rounds):
    for batch, (run, _) in ours.items():
      theirs = ref.train_step_seconds(batch) if ref else None
      times.setdefault((batch, 0), []).append((median_seconds(run, repeats), theirs))
      if batch in chunked:
        times.setdefault((batch, chunked[batch][2]), []).append(
            (median_seconds(chunked[batch][0], repeats), theirs))
    print({k: v[-1] for k, v in times.items()}, flush=True)
  return times


def digits_likelihood(config_path: str, workdir: str, num_images: int,
                      tol: float) -> list[tuple[str, int]]:
  """(label, NFE) of the digits likelihood: ours (Dopri5, both step controls), then the
  reference's solver (scipy RK45) on the same field, as experiments/likelihood_nfe.py does."""
  from likelihood_nfe import scipy_rk45  # pylint: disable=import-outside-toplevel
  from score_sde.experiment import restore  # pylint: disable=import-outside-toplevel

  exp = builders.build_experiment(config_files.load_config_file(config_path, "config"))
  _, params = restore.latest_params(exp, workdir)
  model = common.as_model(exp.unconditional_model(params))
  with exp.dataset(split="test", batch_size=num_images, num_epochs=1, evaluation=True,
                   drop_remainder=False) as it:
    x = jnp.asarray(next(iter(it))["image"])[:num_images]
  key_deq, key_probe = jax.random.split(jax.random.PRNGKey(0))
  u = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:]))(common.sample_keys(key_deq, len(x)))
  data = (255.0 * x + u) / 256.0  # uniform dequantization
  y = 2.0 * data - 1.0 if exp.data.centered else data
  rows = []
  for control in likelihood.STEP_CONTROLS:
    _, _, nfe = likelihood.log_likelihood(key_probe, model, exp.sde, y, rtol=tol, atol=tol,
                                          solver="dopri5", step_control=control)
    rows.append((f"ours, Dopri5, step_control='{control}'", int(np.max(np.asarray(nfe)))))
  probes = likelihood.probes_for(key_probe, y, "rademacher")
  field = jax.jit(likelihood.batch_field(model, exp.sde, "rademacher", probes))
  rows.append(("reference solver (scipy RK45, same field)",
               scipy_rk45(field, y, probes.shape, 1e-5, exp.sde.T, tol, tol)[2]))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference", default=None, help="checkout of yang-song/score_sde_pytorch")
  parser.add_argument("--torch_python", default=None, help="a Python with torch, for the reference")
  parser.add_argument("--digits_workdir", default=None, help="a trained digits main-job run")
  parser.add_argument("--digits_config", default=os.path.join(ROOT, "configs/digits/ddpmpp_vp_small.py"))
  parser.add_argument("--digits_images", type=int, default=33)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--sampler_repeats", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=3,
                      help="rounds of train steps, the reference's and ours alternating")
  parser.add_argument("--train_batch_chunk", default="",
                      help="also time our train steps with config.model.batch_chunk, one value per "
                           "train batch (8, 64), comma-separated, e.g. 2,8")
  parser.add_argument("--write", action="store_true", help="write the table to docs/performance.md")
  parser.add_argument("--quick", action="store_true",
                      help="nf 8 at 8x8, batch 4, N = 5, tol 1e-3, 1 repeat (a smoke test)")
  args = parser.parse_args()
  if bool(args.reference) != bool(args.torch_python):
    parser.error("--reference and --torch_python go together")
  batches, tol, steps = ((4,), 1e-3, 5) if args.quick else ((8, 64), 1e-5, 50)
  if args.quick:
    args.repeats, args.sampler_repeats, args.rounds = 1, 1, 1
  chunks = [int(c) for c in args.train_batch_chunk.split(",")] if args.train_batch_chunk else []
  if chunks and len(chunks) != len(batches):
    parser.error(f"--train_batch_chunk needs one value per train batch {batches}")
  config = tiny_config(8, 8) if args.quick else tiny_config()
  size = config.data.image_size
  images = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)
  loads = [load_line("at start")]

  with (Reference(args, config, tol, images) if args.reference
        else contextlib.nullcontext()) as reference:
    ref = reference.info if reference else None
    if ref:
      loads.append(load_line("after the reference"))
      print({k: v for k, v in ref.items() if k != "params"}, flush=True)
      params = ref.pop("params")
    else:
      print("no --reference: this codebase only", flush=True)
      params = builders.build_experiment(config).init_state().params
    steppers = train_steppers(config, batches)
    chunked = {b: (*v, c) for (b, v), c in zip(train_steppers(config, batches, chunks).items(),
                                               chunks)} if chunks else {}
    step_times = interleaved_train_steps(reference, steppers, chunked, args.rounds, args.repeats)
  loads.append(load_line("after the train steps"))

  peak = matmul_peak(256 if args.quick else 2048, jnp.float32, args.repeats)
  exp = builders.build_experiment(config)
  sde = sde_lib.VESDE(sigma_min=exp.sde.sigma_min, sigma_max=exp.sde.sigma_max, N=steps)
  model = common.as_model(exp.unconditional_model(params))
  score = jax.jit(lambda x, t: parametrization.as_score_fn(model, exp.sde)(x, t))
  x8 = jax.random.uniform(jax.random.PRNGKey(2), (8, size, size, 3))
  t8 = jnp.full((8,), 0.5)
  score_eval = lambda: score(x8, t8)
  free_score = common.as_model(lambda x, t: -x)
  t_score = median_seconds(score_eval, 3 * args.repeats)

  sampler_rows = []
  for label, name, options in OVERHEAD_RUNS:
    run = lambda k, m, name=name, options=options: SAMPLERS[name](k, m, sde, x8.shape, **options)
    nfe = run(jax.random.PRNGKey(0), model)[1]["nfe"]
    wall, ratio = overhead(lambda: run(jax.random.PRNGKey(3), model)[0], nfe, score_eval,
                           args.sampler_repeats)
    # The sampler's own work per evaluation (noise, updates, loop control), in score evaluations:
    # the same sampler with the network replaced by an elementwise score. Not a difference of two
    # noisy walls, so it resolves what the ratio above cannot (its run-to-run spread is ~10 %).
    free_nfe = int(run(jax.random.PRNGKey(0), free_score)[1]["nfe"])
    free_wall = median_seconds(lambda: run(jax.random.PRNGKey(3), free_score)[0],
                               args.sampler_repeats)
    sampler_rows.append((label, nfe, wall, ratio, free_wall / free_nfe / t_score))
    print(sampler_rows[-1], flush=True)
  pc_nfe, pc_wall = sampler_rows[0][1], sampler_rows[0][2]

  y = jnp.asarray(images)
  ll = lambda: likelihood.bits_per_dim(jax.random.PRNGKey(1), model, exp.sde, y, centered=False,
                                       dequantize=False, rtol=tol, atol=tol, step_control="batch")
  ll_wall = median_seconds(lambda: ll()[0], args.repeats)
  ll_nfe = int(np.max(np.asarray(ll()[1])))
  digits = (digits_likelihood(args.digits_config, args.digits_workdir, args.digits_images, tol)
            if args.digits_workdir else [])
  loads.append(load_line("at end"))

  def row(name, ours, theirs, unit="ms", scale=1e3, fmt=".1f"):
    if theirs is None:
      return f"| {name} | {ours * scale:{fmt}} {unit} | - | - |"
    return (f"| {name} | {ours * scale:{fmt}} {unit} | {theirs * scale:{fmt}} {unit} | "
            f"{ours / theirs:.2f} |")

  r = ref or {}
  lines = [f"Model: tiny NCSN++ (VE, continuous; nf {config.model.nf}, ch_mult (1, 2), one res "
           f"block, attention at {size // 2}), {size}x{size}x3, at initialisation. jax {jax.__version__} on "
           f"{jax.devices()[0].platform}"
           + (f"; reference score_sde_pytorch {ref['commit']} on torch {ref['torch']} with "
              f"{ref['threads']} threads" if ref else "; no reference run")
           + f". Float32 GEMM peak ({'256' if args.quick else '2048'}^2 matmul): "
           f"{peak / 1e9:.0f} GFLOP/s. Medians of {args.repeats} runs.",
           "; ".join(loads) + ".", "",
           "| figure | ours | reference | ratio |", "|---|---|---|---|"]
  step_rows = []  # (label, batch, chunk, ours s, reference s or None, ratio or None, FLOP)
  for (batch, chunk), pairs in step_times.items():
    ours_s = median([o for o, _ in pairs])
    theirs = median([t for _, t in pairs]) if ref else None
    ratio = median([o / t for o, t in pairs]) if ref else None
    flops = (chunked[batch] if chunk else steppers[batch])[1]
    label = f"batch {batch}, config.model.batch_chunk = {chunk}" if chunk else f"batch {batch}"
    step_rows.append((label, ours_s, theirs, ratio, flops, pairs))
  for label, ours_s, theirs, ratio, _, _ in step_rows:
    if ref is None:
      lines.append(f"| train step, {label} (fwd+bwd+Adam+EMA) | {ours_s * 1e3:.1f} ms | - | - |")
    else:
      lines.append(f"| train step, {label} (fwd+bwd+Adam+EMA) | {ours_s * 1e3:.1f} ms | "
                   f"{theirs * 1e3:.1f} ms | {ratio:.2f} |")
  lines.append(row("score evaluation, batch 8", t_score, r.get("score_eval_s")))
  lines.append(row(f"PC sampler, N = {steps}, reverse diffusion + Langevin ({pc_nfe} NFE)",
                   pc_wall, r.get("pc_s"), unit="s", scale=1.0, fmt=".2f"))
  lines.append(row(f"likelihood, 2 images, tol {tol:g}: seconds", ll_wall, r.get("likelihood_s"),
                   unit="s", scale=1.0, fmt=".2f"))
  lines.append(row(f"likelihood, 2 images, tol {tol:g}: NFE", ll_nfe, r.get("likelihood_nfe"),
                   unit="", scale=1, fmt="d"))
  if digits:
    ref_nfe = digits[-1][1]
    for label, nfe in digits[:-1]:
      lines.append(f"| digits likelihood NFE, {args.digits_images} test images, tol {tol:g}, "
                   f"{label} vs {digits[-1][0]} | {nfe} | {ref_nfe} | {nfe / ref_nfe:.2f} |")
  lines += ["", "| train step | FLOP | GFLOP/s | share of the GEMM peak |", "|---|---|---|---|"]
  for label, seconds, _, _, flops, _ in step_rows:
    lines.append(f"| {label} | {flops / 1e9:.2f} G | {flops / seconds / 1e9:.1f} | "
                 f"{100 * flops / seconds / peak:.1f} % |")
  if ref:
    lines += ["", f"Train steps in {args.rounds} rounds, the reference's and ours alternating "
              f"(each a median of {args.repeats}; the table gives the medians over rounds, the "
              "ratio the median of the rounds' ratios). Ratio per round:", ""]
    lines += [f"- {label}: " + ", ".join(f"{o / t:.2f}" for o, t in pairs)
              for label, _, _, _, _, pairs in step_rows]
  lines += ["", f"Sampler overhead, batch 8 (one score evaluation {1e3 * t_score:.1f} ms):", "",
            "| sampler | NFE | wall s | wall / (NFE x eval) | own work per NFE / eval |",
            "|---|---|---|---|---|"]
  lines += [f"| {label} | {nfe} | {wall:.2f} | {ratio:.3f} | {100 * own:.2f} % |"
            for label, nfe, wall, ratio, own in sampler_rows]
  lines.append(f"\n(PC: N = {steps} levels of the VE SDE, one corrector step per level. Own work: "
               "the same sampler's wall per NFE with the network replaced by the elementwise "
               "score -x, over one score evaluation; the overhead without the timing spread is "
               "1 + that.)")
  table = "\n".join(lines)
  print(table)
  if args.write:
    write_doc(table, " ".join(["PYTHONPATH=. python experiments/bench_reference.py"] + sys.argv[1:]))


def write_doc(table: str, command: str) -> None:
  with open(DOC) as f:
    text = f.read()
  if BEGIN not in text:
    raise SystemExit(f"{DOC} lacks the markers {BEGIN} ... {END}")
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  with open(DOC, "w") as f:
    f.write(f"{head}{BEGIN}\n```\n{command}\n```\n\n{table}\n{END}{tail}")


if __name__ == "__main__":
  main()
