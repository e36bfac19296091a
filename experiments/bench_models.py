"""Time one training step (forward, backward, Adam) of NCSN++ on this machine.

Cases: the tiny NCSN++ (nf 32, ch_mult (1, 2), 1 res block, attention at 16, 32x32x3, batch 8) and the
full CIFAR-10 NCSN++ cont. (VE) at batch 1. The FIR share is estimated by timing the same model with
`fir=False` (naive resampling, same parameter count): share = 1 - t(fir off) / t(fir on).

With `--pytorch-ref PATH` (a checkout of yang-song/score_sde_pytorch; needs torch) it also times the
reference's step at the same configuration and prints the ratio. The reference's CUDA upfirdn2d
extension is replaced by a pure-PyTorch upfirdn2d so that it runs on CPU.

Run: PYTHONPATH=. python experiments/bench_models.py [--repeats 5] [--cases tiny,full]
--quick: the tiny case only, 1 repeat, no FIR share (a smoke test); the PyTorch side still needs
--pytorch-ref.
"""
import argparse
import functools
import statistics
import sys
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from score_sde.experiment.builders import conversion_kwargs, get_model


def ncsnpp_config(tiny: bool, fir: bool = True) -> ml_collections.ConfigDict:
  """Reference NCSN++ cont. (VE) CIFAR-10 config; `tiny` applies the small override."""
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict({"continuous": True, "sde": "vesde"})
  config.data = ml_collections.ConfigDict(
      {"image_size": 32, "num_channels": 3, "centered": False})
  config.model = ml_collections.ConfigDict(dict(
      name="ncsnpp", scale_by_sigma=True, normalization="GroupNorm", nonlinearity="swish",
      nf=32 if tiny else 128, ch_mult=(1, 2) if tiny else (1, 2, 2, 2),
      num_res_blocks=1 if tiny else 4, attn_resolutions=(16,), resamp_with_conv=True,
      conditional=True, fir=fir, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
      resblock_type="biggan", progressive="none", progressive_input="residual",
      progressive_combine="sum", attention_type="ddpm", init_scale=0.0, fourier_scale=16,
      conv_size=3, embedding_type="fourier", dropout=0.1, sigma_min=0.01, sigma_max=50.0,
      num_scales=1000, beta_min=0.1, beta_max=20.0, ema_rate=0.999))
  return config


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def make_jax_step(config, batch: int):
  """Compile one jitted DSM training step for `config`; returns (run_once, compile seconds)."""
  model = get_model(config)
  size, channels = config.data.image_size, config.data.num_channels
  x_shape = (batch, size, size, channels)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x_shape),
                                             jnp.ones((batch,)), train=False))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.02 * rng.normal(size=s.shape), jnp.float32), shapes)
  optimizer = optax.adam(2e-4)
  opt_state = optimizer.init(params)

  def loss_fn(p, x, sigma, z, key):
    score = model.apply({"params": p}, x + sigma[:, None, None, None] * z, sigma, train=True,
                        rngs={"dropout": key})
    return jnp.mean(jnp.sum((score * sigma[:, None, None, None] + z) ** 2, axis=(1, 2, 3)))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, state, x, sigma, z, key):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, sigma, z, key)
    updates, state = optimizer.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.uniform(keys[0], x_shape)
  z = jax.random.normal(keys[1], x_shape)
  sigma = jnp.full((batch,), 1.0)
  carry = {"p": params, "s": opt_state}

  def run():
    carry["p"], carry["s"], loss = step(carry["p"], carry["s"], x, sigma, z, keys[2])
    jax.block_until_ready(loss)

  start = time.perf_counter()
  run()
  return run, time.perf_counter() - start


def _naive_upfirdn2d(x, k, up=1, down=1, pad=(0, 0)):
  """Baseline: materialise the zero-inserted, padded image, then one depthwise conv, decimate."""
  k2 = np.outer(k, k) if np.ndim(k) == 1 else np.asarray(k)
  c = x.shape[-1]
  z = jax.lax.pad(x, 0.0, ((0, 0, 0), (pad[0], pad[1] + up - 1, up - 1),
                           (pad[0], pad[1] + up - 1, up - 1), (0, 0, 0)))
  w = jnp.asarray(np.tile(k2[::-1, ::-1, None, None], (1, 1, 1, c)), x.dtype)
  y = jax.lax.conv_general_dilated(z, w, (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                   feature_group_count=c)
  return y[:, ::down, ::down]


def bench_fir_ops(repeats: int):
  """Forward+backward time of each FIR op at tiny-model shapes: ours vs a materialising baseline."""
  from score_sde.models import up_or_down_sampling as fir  # pylint: disable=import-outside-toplevel
  k = [1, 3, 3, 1]
  k_up, k_dn = fir.setup_kernel(k, 2), fir.setup_kernel(k)
  lo_res = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 16, 64))
  hi_res = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 64))
  w = 0.05 * jax.random.normal(jax.random.PRNGKey(2), (3, 3, 64, 64))
  conv = lambda a, stride=1: jax.lax.conv_general_dilated(
      a, w, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  full_transposed = lambda a: jax.lax.conv_general_dilated(  # zero-dilated input, pad K-1
      a, w, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  cases = {
      "upsample_2d 16->32": (lo_res, lambda a: fir.upsample_2d(a, k),
                             lambda a: _naive_upfirdn2d(a, k_up, up=2, pad=(2, 1))),
      "downsample_2d 32->16": (hi_res, lambda a: fir.downsample_2d(a, k),
                               lambda a: _naive_upfirdn2d(a, k_dn, down=2, pad=(1, 1))),
      "upsample_conv_2d 16->32": (lo_res, lambda a: fir.upsample_conv_2d(a, w, k),
                                  lambda a: _naive_upfirdn2d(full_transposed(a), k_up,
                                                             pad=(1, 1))),
      "conv_downsample_2d 32->16": (hi_res, lambda a: fir.conv_downsample_2d(a, w, k),
                                    lambda a: conv(_naive_upfirdn2d(a, k_dn, pad=(2, 2)), 2)),
  }
  for name, (inp, ours, baseline) in cases.items():
    fns = {label: jax.jit(jax.value_and_grad(lambda a, f=f: jnp.sum(f(a) ** 2)))
           for label, f in (("ours", ours), ("baseline", baseline))}
    np.testing.assert_allclose(fns["ours"](inp)[0], fns["baseline"](inp)[0], rtol=1e-4)
    times = {label: [] for label in fns}
    for _ in range(repeats):
      for label, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(inp))
        times[label].append(time.perf_counter() - start)
    print(f"[FIR op, batch 8, 64 ch, fwd+bwd] {name}: ours "
          f"{statistics.median(times['ours']) * 1e3:.2f} ms, materialising baseline "
          f"{statistics.median(times['baseline']) * 1e3:.2f} ms", flush=True)


def _torch_upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
  """Pure-PyTorch upfirdn2d (NCHW): zero-insert, pad, true 2-D convolution, decimate."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  b, c, h, w = x.shape
  x = x.reshape(b * c, 1, h, 1, w, 1)
  x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1)).reshape(b * c, 1, h * up, w * up)
  p0, p1 = pad
  x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
  x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
  k = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None]
  x = F.conv2d(x, k)[:, :, ::down, ::down]
  return x.reshape(b, c, x.shape[2], x.shape[3])


def _load_pytorch_ncsnpp(ref_path: str, config):
  """The reference's NCSNpp(config), with a CPU upfirdn2d in place of its CUDA `op` extension."""
  op = types.ModuleType("op")
  op.upfirdn2d = _torch_upfirdn2d
  sys.modules.setdefault("op", op)
  if ref_path not in sys.path:
    sys.path.insert(0, ref_path)
  from models import ncsnpp as ref_ncsnpp  # pylint: disable=import-outside-toplevel
  return ref_ncsnpp.NCSNpp(config)


def check_pytorch_outputs(ref_path: str, config) -> float:
  """Max |ours - reference| of the score on the same input, after converting the reference's
  (randomly perturbed) weights with score_sde.io.convert; validates mapping and architecture."""
  import torch  # pylint: disable=import-outside-toplevel
  from score_sde.io import convert  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  ref = _load_pytorch_ncsnpp(ref_path, config).eval()
  with torch.no_grad():
    for p in ref.parameters():  # zero-initialised convs would hide mapping errors
      p.add_(0.05 * torch.randn_like(p))
  params = convert.from_pytorch_state_dict(
      {k: v.numpy() for k, v in ref.state_dict().items()}, **conversion_kwargs(config))
  size = config.data.image_size
  x = np.random.default_rng(0).uniform(size=(2, size, size, 3)).astype(np.float32)
  sigma = np.array([0.3, 4.0], np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(sigma)).numpy()
  got = get_model(config).apply({"params": params}, jnp.asarray(x), jnp.asarray(sigma),
                                train=False)
  return float(np.abs(np.asarray(got) - want.transpose(0, 2, 3, 1)).max())


def time_pytorch_step(ref_path: str, config, batch: int, repeats: int) -> dict:
  """Median seconds of the reference PyTorch model's training step at the same configuration."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = _load_pytorch_ncsnpp(ref_path, config).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
  size = config.data.image_size
  x = torch.rand(batch, config.data.num_channels, size, size)
  z = torch.randn_like(x)
  sigma = torch.ones(batch)

  def run():
    optimizer.zero_grad()
    score = model(x + z, sigma)
    loss = ((score + z) ** 2).sum(dim=(1, 2, 3)).mean()
    loss.backward()
    optimizer.step()

  run()  # warm-up
  return {"step_s": _median_time(run, repeats),
          "threads": torch.get_num_threads()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cases", default="tiny,full")
  parser.add_argument("--no-fir-share", action="store_true", help="skip the fir=False timing")
  parser.add_argument("--pytorch-ref", default=None, help="path to a score_sde_pytorch checkout")
  parser.add_argument("--fir-ops", action="store_true", help="also time the FIR ops alone")
  parser.add_argument("--quick", action="store_true", help="tiny case, 1 repeat, no FIR share")
  args = parser.parse_args(argv)
  if args.quick:
    args.cases, args.repeats, args.no_fir_share = "tiny", 1, True
  if not args.pytorch_ref:
    print("no --pytorch-ref: skipping the PyTorch reference (JAX timings only)")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {args.repeats} repeats (median)")
  if args.fir_ops:
    bench_fir_ops(args.repeats)
  for case in filter(None, args.cases.split(",")):
    tiny = case == "tiny"
    batch = 8 if tiny else 1
    run_fir, compile_s = make_jax_step(ncsnpp_config(tiny, fir=True), batch)
    runs = {"fir on": run_fir}
    if not args.no_fir_share:
      runs["fir off"], _ = make_jax_step(ncsnpp_config(tiny, fir=False), batch)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that load drift hits both alike
      for name, run in runs.items():
        start = time.perf_counter()
        run()
        times[name].append(time.perf_counter() - start)
    step_s = {name: statistics.median(t) for name, t in times.items()}
    line = (f"[{case} NCSN++, batch {batch}] JAX step {step_s['fir on'] * 1e3:.1f} ms "
            f"(compile {compile_s:.1f} s)")
    if "fir off" in step_s:
      share = 1 - step_s["fir off"] / step_s["fir on"]
      line += (f"; fir off {step_s['fir off'] * 1e3:.1f} ms -> FIR share "
               f"{100 * share:.1f}%")
    print(line, flush=True)
    if args.pytorch_ref:
      err = check_pytorch_outputs(args.pytorch_ref, ncsnpp_config(tiny, fir=True))
      print(f"[{case} NCSN++] converted reference weights: max |JAX - PyTorch| = {err:.2e}")
      ref = time_pytorch_step(args.pytorch_ref, ncsnpp_config(tiny, fir=True), batch,
                              args.repeats)
      print(f"[{case} NCSN++, batch {batch}] PyTorch reference step {ref['step_s'] * 1e3:.1f} ms "
            f"({ref['threads']} threads); JAX/PyTorch time ratio "
            f"{step_s['fir on'] / ref['step_s']:.2f}", flush=True)


if __name__ == "__main__":
  main()
