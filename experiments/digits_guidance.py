"""Class-guided sampling on the digits: accuracy of the requested class and FDD per guidance weight.

Needs trained work directories:
  python main.py --config configs/digits/ddpmpp_vp_cfg.py --workdir runs/digits_cfg --mode train
  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode train
  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode train_classifier
then
  python experiments/digits_guidance.py --cfg_workdir runs/digits_cfg \
      --classifier_workdir runs/digits [--n 256] [--figure docs/figures/digits_guidance.png]

Class accuracy is the fraction of samples the project's digits CNN (test accuracy 0.958, not the
guiding classifier) assigns to the requested class; labels cycle through the 10 digits.
Results are kept in docs/controllable.md.

--quick (a smoke test of the pipeline, no work directory needed): untrained one-level models with
N = 10 steps and n = 20 samples; given work directories are ignored.
"""
import argparse
import copy
import os
import sys
import time

import jax
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs.digits import ddpmpp_vp_cfg, ddpmpp_vp_small  # noqa: E402  (ROOT is sys.path[0])
from score_sde.io import logging_utils  # noqa: E402
from score_sde.experiment import builders, classifier_training, evaluation, restore  # noqa: E402


def _shrink(config):
  """The quick variant: a one-level nf 8 model and 10 sampler steps."""
  config.model.update(nf=8, ch_mult=(1,), attn_resolutions=(), num_scales=10)
  return config


def measure(config, workdir, n, guidance, scale, use_classifier):
  """workdir None: untrained parameters (and classifier), for --quick."""
  config = copy.deepcopy(config)
  config.sampling.guidance = guidance
  config.sampling.guidance_scale = scale
  exp = builders.build_experiment(config)
  if workdir is None:
    params = exp.init_state().ema_params
    classifier_params = None
    if use_classifier:
      shape = (1, *exp.image_shape)
      classifier_params = classifier_training.init_classifier_state(
          jax.random.PRNGKey(0), exp.classifier_module, optax.identity(), shape).params
  else:
    _, params = restore.latest_params(exp, workdir)
    classifier_params = restore.load_classifier_params(exp, workdir)[1] if use_classifier else None
  start = time.perf_counter()
  batch = min(n, 128)
  batches = [exp.generate(jax.random.fold_in(exp.sample_key, r), params, batch, offset=batch * r,
                          classifier_params=classifier_params)
             for r in range(-(-n // batch))]
  x = np.concatenate([np.asarray(b[0]) for b in batches])[:n]
  labels = np.concatenate([b[1] for b in batches])[:n]  # guided runs only: labels are never None
  images = np.round(np.clip(np.asarray(exp.inverse_scaler(x)), 0, 1) * 255).astype(np.uint8)
  metrics = evaluation.sample_metrics(exp, images, None, labels)
  return images, labels, metrics, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cfg_workdir")
  parser.add_argument("--classifier_workdir")
  parser.add_argument("--n", type=int, default=256)
  parser.add_argument("--figure", default=None)
  parser.add_argument("--quick", action="store_true", help="untrained tiny models, n=20")
  args = parser.parse_args()
  cfg_config, small_config = ddpmpp_vp_cfg.get_config(), ddpmpp_vp_small.get_shared_config()
  if args.quick:
    print("--quick: untrained tiny models, not the work directories (a smoke test; the numbers mean nothing)")
    args.n, args.cfg_workdir, args.classifier_workdir = 20, None, None
    cfg_config, small_config = _shrink(cfg_config), _shrink(small_config)
  elif not (args.cfg_workdir and args.classifier_workdir):
    parser.error("--cfg_workdir and --classifier_workdir are required (or --quick)")
  runs = [("cfg", w, cfg_config, args.cfg_workdir, False) for w in (0.0, 1.0, 3.0)]
  runs += [("classifier", s, small_config, args.classifier_workdir, True) for s in (1.0, 4.0)]
  print("| guidance | scale | class accuracy | FDD | seconds |")
  print("|---|---|---|---|---|")
  rows = []
  for guidance, scale, config, workdir, use_classifier in runs:
    images, labels, metrics, seconds = measure(config, workdir, args.n, guidance, scale,
                                               use_classifier)
    accuracy = metrics["class_accuracy"]["value"]
    print(f"| {guidance} | {scale:g} | {accuracy:.3f} | {metrics['fdd']['value']:.2f} | "
          f"{seconds:.0f} |", flush=True)
    per_class = min(10, args.n // 10)
    order = np.argsort(labels[:10 * per_class], kind="stable")  # rows by class
    rows.append(images[:10 * per_class][order].reshape(10, per_class, *images.shape[1:]))
  if args.figure:
    # One block per run: 10 rows (digits 0-9) of up to 10 samples; blocks side by side.
    blocks = [logging_utils.make_grid(r.reshape(-1, *r.shape[2:]), nrow=r.shape[1]) for r in rows]
    logging_utils.save_image_grid(np.stack(blocks).astype(np.float32) / 255.0, args.figure,
                                  nrow=len(blocks), padding=6, pad_value=1.0)


if __name__ == "__main__":
  main()
