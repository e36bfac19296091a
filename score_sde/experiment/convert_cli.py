"""``score-sde-convert``: a reference checkpoint (PyTorch or JAX) as a training work directory."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import jax
import jax.numpy as jnp

from score_sde.experiment import builders, config_files, distributed
from score_sde.io import checkpointing, torch_pickle
from score_sde.io.convert import from_flax_checkpoint, from_pytorch_checkpoint


def convert_main(argv: Optional[List[str]] = None) -> str:
  """CLI: convert a reference checkpoint into a training work directory of this project.

  Usage: score-sde-convert --config CONFIG.py --source CKPT [--format pytorch|flax] --out WORKDIR
  Writes a snapshot (params, EMA params, a fresh optimiser state) to WORKDIR/checkpoints, so that
  ``main.py --config CONFIG.py --workdir WORKDIR --mode sample`` (or eval, or train to fine-tune)
  uses it directly.
  """
  parser = argparse.ArgumentParser(prog="score-sde-convert", description=convert_main.__doc__)
  parser.add_argument("--config", required=True, help="config file with get_config()")
  parser.add_argument("--source", required=True, help=".pth (PyTorch) or checkpoint_N (JAX)")
  parser.add_argument("--format", choices=["pytorch", "flax"], default=None,
                      help="default: pytorch for .pth/.pt files, flax otherwise")
  parser.add_argument("--out", required=True, help="work directory to write the checkpoint into")
  parser.add_argument("--step", type=int, default=0, help="training step to record")
  parser.add_argument("--autoencoder", action="store_true",
                      help="the source is a KL autoencoder (Stable Diffusion's VAE: a diffusers "
                           ".safetensors/.bin or an LDM/SD .ckpt) of config.autoencoder and "
                           "config.data; written to WORKDIR/autoencoder for "
                           "config.latent.autoencoder_workdir")
  parser.add_argument("--scale_factor", type=float, default=None,
                      help="--autoencoder: the latent scale factor to store with it (SD: 0.18215); "
                           "without it, latent configs must set config.latent.scale_factor")
  args = parser.parse_args(argv)
  if not os.path.exists(args.source):
    parser.error(f"--source {args.source!r} does not exist: give the reference's checkpoint file "
                 "(.pth, or checkpoint_N of the JAX reference) or the autoencoder's weights file")
  config = config_files.load_config_file(args.config, "--config")
  if args.autoencoder:
    return _convert_autoencoder(config, args)
  target = builders.conversion_kwargs(config)
  fmt = args.format or ("pytorch" if args.source.endswith((".pth", ".pt")) else "flax")
  if fmt == "pytorch":
    converted = from_pytorch_checkpoint(torch_pickle.load_torch_file(args.source), **target)
  else:
    converted = from_flax_checkpoint(args.source, **target)
  converted.setdefault("ema_params", converted["params"])

  state = builders.get_state_init(config)()
  replicated = distributed.replicated(distributed.data_mesh())
  to_device = lambda tree: jax.device_put(jax.tree_util.tree_map(jnp.asarray, tree), replicated)
  state = state.replace(step=jnp.asarray(args.step, jnp.int32), params=to_device(converted["params"]),
                        ema_params=to_device(converted["ema_params"]))
  out = os.path.abspath(args.out)
  ckpts = checkpointing.TrainCheckpoints(out)
  ckpts.save(args.step, state, snapshot=True)
  ckpts.wait_until_finished()
  ckpts.close()
  print(f"wrote step {args.step} to {out}/checkpoints")
  return out


def _convert_autoencoder(config, args) -> str:
  from score_sde.experiment import autoencoder  # pylint: disable=import-outside-toplevel
  from score_sde.io import convert  # pylint: disable=import-outside-toplevel

  spec = builders.get_autoencoder_options(config).spec
  spec = {**spec, "discriminator": None}  # released VAEs come without their discriminator
  model, _ = autoencoder.build_modules(spec)
  params = convert.from_pytorch_state_dict(convert.load_state_dict_file(args.source), model,
                                           image_size=config.data.image_size,
                                           num_channels=config.data.num_channels)
  out = autoencoder.write_imported(os.path.abspath(args.out), spec, params, step=args.step,
                                   scale_factor=args.scale_factor)
  print(f"wrote the autoencoder at step {args.step} to {out}")
  return out


if __name__ == "__main__":
  convert_main(sys.argv[1:])
