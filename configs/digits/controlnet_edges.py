"""A ControlNet on the main job's model: digits drawn along a given Sobel edge map.

  python main.py --config configs/digits/controlnet_edges.py --workdir runs/digits_edges \
      --mode train_controlnet --config.controlnet.base_workdir=runs/digits
  python main.py --config configs/digits/controlnet_edges.py --workdir runs/digits_edges \
      --mode sample [--control FOLDER_OF_EDGE_MAPS]

The base is the README's main job (configs/digits/ddpmpp_vp_small.py trained into runs/digits),
frozen; the trainable copy of its down path and middle block
(starting at the base's weights), the hint encoder and the zero convolutions learn to follow the
Sobel edge map of the training digit (experiment/controlnet.py). 10% of the controls are dropped
(all-zero), which makes guidance on the control (config.controlnet.guidance_scale) possible.
Snapshots every 250 steps, so that the adherence of their samples traces the "sudden convergence"
(docs/image_conditioning.md, experiments/controlnet_study.py). Bits/dim are off: they would be
conditional on the control. Expected: samples whose edges correlate with the held-out digits'
edge maps (adherence, the mean correlation, far above the base model's).
"""
import ml_collections

from configs.digits import ddpmpp_vp_small


def get_config() -> ml_collections.ConfigDict:
  config = ddpmpp_vp_small.get_shared_config()
  controlnet = config.controlnet
  controlnet.control_type = "sobel_edges"
  controlnet.base_workdir = "runs/digits"
  controlnet.drop_prob = 0.1
  training = config.training
  training.n_iters = 2000
  training.snapshot_freq = 250
  training.snapshot_freq_for_preemption = 250
  training.eval_freq = 250
  config.optim.lr = 1e-3
  config.eval.enable_bpd = False
  return config
