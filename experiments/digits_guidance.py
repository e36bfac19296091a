"""Class-guided sampling on the digits: accuracy of the requested class and FDD per guidance weight.

Needs trained work directories:
  python main.py --config configs/digits/ddpmpp_vp_cfg.py --workdir runs/digits_cfg --mode train
  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode train
  python main.py --config configs/digits/ddpmpp_vp_small.py --workdir runs/digits --mode train_classifier
then
  PYTHONPATH=. python experiments/digits_guidance.py --cfg_workdir runs/digits_cfg \
      --classifier_workdir runs/digits [--n 256] [--figure docs/figures/digits_guidance.png]

Class accuracy is the fraction of samples the project's digits CNN (test accuracy 0.958, not the
guiding classifier) assigns to the requested class; labels cycle through the 10 digits.
Results are kept in docs/controllable.md.
"""
import argparse
import copy
import time

import jax
import numpy as np

from configs.digits import ddpmpp_vp_cfg, ddpmpp_vp_small
from score_sde.io import logging_utils
from score_sde.experiment import builders, evaluation, restore
from score_sde.metrics import digits_classifier as dc


def measure(config, workdir, n, guidance, scale, use_classifier):
  config = copy.deepcopy(config)
  config.sampling.guidance = guidance
  config.sampling.guidance_scale = scale
  exp = builders.build_experiment(config)
  _, params = restore.latest_params(exp, workdir)
  classifier_params = restore.load_classifier_params(exp, workdir)[1] if use_classifier else None
  start = time.perf_counter()
  batches = [exp.generate(jax.random.fold_in(exp.sample_key, r), params, 128, offset=128 * r,
                          classifier_params=classifier_params)
             for r in range(-(-n // 128))]
  x = np.concatenate([np.asarray(b[0]) for b in batches])[:n]
  labels = np.concatenate([b[1] for b in batches])[:n]  # guided runs only: labels are never None
  images = np.round(np.clip(np.asarray(exp.inverse_scaler(x)), 0, 1) * 255).astype(np.uint8)
  metrics = evaluation.sample_metrics(exp, images, None, labels)
  return images, labels, metrics, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cfg_workdir", required=True)
  parser.add_argument("--classifier_workdir", required=True)
  parser.add_argument("--n", type=int, default=256)
  parser.add_argument("--figure", default=None)
  args = parser.parse_args()
  runs = [("cfg", w, ddpmpp_vp_cfg.get_config(), args.cfg_workdir, False) for w in (0.0, 1.0, 3.0)]
  runs += [("classifier", s, ddpmpp_vp_small.get_config(), args.classifier_workdir, True)
           for s in (1.0, 4.0)]
  print("| guidance | scale | class accuracy | FDD | seconds |")
  print("|---|---|---|---|---|")
  rows = []
  for guidance, scale, config, workdir, use_classifier in runs:
    images, labels, metrics, seconds = measure(config, workdir, args.n, guidance, scale,
                                               use_classifier)
    accuracy = metrics["class_accuracy"]["value"]
    print(f"| {guidance} | {scale:g} | {accuracy:.3f} | {metrics['fdd']['value']:.2f} | "
          f"{seconds:.0f} |", flush=True)
    order = np.argsort(labels[:100], kind="stable")  # 10 per class, rows by class
    rows.append(images[:100][order].reshape(10, 10, *images.shape[1:]))
  if args.figure:
    # One block per run: 10 rows (digits 0-9) of 10 samples; blocks side by side.
    blocks = [logging_utils.make_grid(r.reshape(-1, *r.shape[2:]), nrow=10) for r in rows]
    logging_utils.save_image_grid(np.stack(blocks).astype(np.float32) / 255.0, args.figure,
                                  nrow=len(blocks), padding=6, pad_value=1.0)


if __name__ == "__main__":
  main()
