"""Command line: ``python main.py --config CONFIG --workdir DIR --mode MODE`` (also ``score-sde``).

Config fields are overridden with ``--config.training.batch_size=64``; an unknown field or a value
of the wrong type is rejected by ml_collections with the field's name.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from score_sde.experiment import config_files

FLAGS = flags.FLAGS


def _mode(module: str, function: str, *flag_names: str):
  """Mode function ``(config, workdir)`` calling score_sde.experiment.<module>.<function> with the
  named flags after them; imported when run, since importing jax is slow."""

  def run(config, workdir):
    fn = getattr(importlib.import_module(f"score_sde.experiment.{module}"), function)
    # FLAGS[name].value: the default when called without parsed flags (from Python, as in tests).
    return fn(config, workdir, *(FLAGS[name].value for name in flag_names))

  return run


MODES = {
    "train": _mode("train", "train"),
    "eval": _mode("evaluation", "evaluate", "eval_folder", "inception_weights"),
    "sample": _mode("generate", "sample", "control"),
    "likelihood": _mode("evaluation", "likelihood"),
    "fid_stats": _mode("fid_reference", "fid_stats", "inception_weights"),
    "inpaint": _mode("controllable_io", "inpaint", "input", "mask"),
    "colorize": _mode("controllable_io", "colorize", "input"),
    "train_classifier": _mode("train", "train_classifier"),
    "reflow_pairs": _mode("reflow", "reflow_pairs"),
    "train_autoencoder": _mode("autoencoder", "train_autoencoder"),
    "upsample": _mode("cascade", "upsample", "input"),
    "train_controlnet": _mode("train", "train_controlnet"),
}
NEEDS_INPUT = ("inpaint", "colorize", "upsample")

config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/digits/ddpmpp_vp_small.py.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples, TensorBoard logs.")
flags.DEFINE_enum("mode", "train", list(MODES),
                  "train: train or resume; eval: evaluate snapshots as they appear (loss, bits/dim, "
                  "samples; FID/KID/IS with --inception_weights); sample: write samples of the newest "
                  "checkpoint; likelihood: bits/dim of the newest checkpoint on the test split; "
                  "fid_stats: Inception reference statistics of the config's dataset; inpaint: fill "
                  "the --mask region of the images under --input; colorize: colour the gray "
                  "versions of the images under --input; train_classifier: the noise-conditional "
                  "classifier of classifier guidance (config.classifier), into workdir/classifier; "
                  "reflow_pairs: (noise, data) couplings of the newest checkpoint's probability-flow "
                  "ODE, into workdir/reflow_pairs, to train a rectified flow on (config.reflow); "
                  "train_autoencoder: the KL autoencoder of latent diffusion (config.autoencoder), "
                  "into workdir/autoencoder, which config.latent.autoencoder_workdir then names; "
                  "upsample: the super-resolution model's outputs for the low-resolution images "
                  "under --input. A config with config.cascade makes --mode sample run the "
                  "cascade (base model, then each super-resolution stage); train_controlnet: a "
                  "ControlNet (config.controlnet) on the frozen model of "
                  "config.controlnet.base_workdir, then --mode sample [--control FOLDER].")
flags.DEFINE_string("eval_folder", "eval", "Subdirectory of workdir for evaluation outputs.")
flags.DEFINE_string("inception_weights", None,
                    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for FID/KID/IS (eval) and "
                    "--mode fid_stats; defaults to $SCORE_SDE_INCEPTION_WEIGHTS. Never downloaded.")
flags.DEFINE_string("input", None,
                    "Folder of PNG/JPEG images for --mode inpaint / colorize / upsample.")
flags.DEFINE_string("control", None,
                    "--mode sample of a ControlNet config: a folder of control images (e.g. edge "
                    "maps), one sample each; without it, the controls of the test images.")
flags.DEFINE_string("mask", "center",
                    "--mode inpaint: the region to generate, one of center/left/right/top/bottom, or "
                    "a mask image (white keeps the input pixel, black generates it).")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for multi-host runs (jax.distributed.initialize).")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "Index of this process in a multi-host run.")
flags.DEFINE_integer(
    "cpu_devices", None,
    "Run the CPU backend as this many devices (jax_num_cpu_devices), the batch split over them as "
    "over accelerators: on a CPU, XLA runs one device's operations one after another, each on all "
    "cores, and leaves cores idle between small ones; on 2 cores two devices run the main job's "
    "training 1.2-1.3x and its eval 1.5x faster (docs/performance.md). Batches must divide by it. "
    "Default: JAX's (one device, or $JAX_NUM_CPU_DEVICES, or XLA_FLAGS' "
    "--xla_force_host_platform_device_count).",
    lower_bound=1)


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.mode in NEEDS_INPUT and not FLAGS.input:
    raise app.UsageError(f"--mode {FLAGS.mode} needs --input, a folder of images.")
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
  logging.getLogger("score_sde").setLevel(logging.INFO)
  import jax  # pylint: disable=import-outside-toplevel  (after flag parsing: importing jax is slow)

  from score_sde.experiment import distributed  # pylint: disable=import-outside-toplevel

  if FLAGS.cpu_devices is not None:
    jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)  # before the backend starts
  distributed.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                           FLAGS.process_id)
  logging.getLogger(__name__).info("%d %s device(s) in %d process(es)", jax.device_count(),
                                   jax.default_backend(), jax.process_count())
  from score_sde.experiment import loop  # pylint: disable=import-outside-toplevel

  try:
    MODES[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except loop.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)


def _config_argument(argv) -> str | None:
  """The value of --config in ``argv`` (``--config=PATH`` or ``--config PATH``), if given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def main(argv=None):
  # Config files import their bases as `configs.*`: the working directory (the repository root)
  # and the package root of the --config file go on sys.path before the flags load the file.
  sys.path.insert(0, os.getcwd())
  config_file = _config_argument(argv or sys.argv)
  if config_file and os.path.isfile(config_file):
    config_files.add_package_root(config_file)
  flags.mark_flags_as_required(["config", "workdir"])
  try:
    app.run(_run, argv)
  except AttributeError as e:
    if FLAGS.is_parsed():
      raise
    # ml_collections rejects an override of a field the config lacks while the flags are parsed.
    name = str(e).strip("'\"")
    given = [a for a in (argv or sys.argv) if a.startswith("--config.") and name in a]
    sys.exit(f"Unknown config field {name!r} in {' '.join(given) or 'a --config.* override'}: "
             "the config file has no such field (spelling, or section?).")
