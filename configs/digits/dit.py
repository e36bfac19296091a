"""A small DiT (Peebles & Xie 2023) on the 16x16 digits, VP SDE: the main job's schedule and
sampler (configs/digits/ddpmpp_vp_small.py) with the transformer instead of the U-Net.

  python main.py --config configs/digits/dit.py --workdir runs/digits_dit --mode train
  python main.py --config configs/digits/dit.py --workdir runs/digits_dit --mode eval

DiT-S/2's structure shrunk for a CPU: patch 2 (64 tokens), hidden 64, depth 4, 4 heads: 328,260
parameters, the main job's DDPM++ has 317,121. Unconditional (num_classes 0; set
--config.model.num_classes=10 for classifier-free guidance) and without the learned-σ channels,
which no score parametrisation here reads.
Expected (one run, measured beside other jobs on 2 CPU cores): 2500 steps in about 9 minutes,
a grid of mostly recognisable but blurrier digits than the main job's in
runs/digits_dit/samples/iter_2500.png, and in runs/digits_dit/eval/report_2500.json (11 minutes)
test loss 0.038, bits/dim 3.54, Frechet Digits Distance 23.7 (DDPM++ main job: 0.028, 2.72, 12.7).
At this size and length the U-Net is ahead; the learning rate was not tuned.
"""
import ml_collections

from configs import architectures, default_cifar10_configs
from configs.digits import ddpmpp_vp_small


def get_config() -> ml_collections.ConfigDict:
  config = ddpmpp_vp_small.get_shared_config()
  model = default_cifar10_configs.get_default_configs().model  # no U-Net fields
  model.update(architectures.dit("S", 2, ema_rate=0.999, learn_sigma=False))
  model.update(hidden_size=64, depth=4, num_heads=4, num_scales=500)
  config.model = model
  config.optim.lr = 1e-3
  return config
