r"""DDPM++ on CIFAR-10 with the sub-VP SDE, continuous time.

configs/vp/cifar10_ddpmpp_continuous.py with the sub-VP SDE.

    python main.py --config configs/subvp/cifar10_ddpmpp_continuous.py \
        --workdir runs/subvp_cifar10_ddpmpp_continuous --mode train

Expected (reference README): FID 2.61, Inception score 9.56 (50k samples); FID 3.16 with the
probability-flow ODE; 3.02 bits/dim on dequantized test images.
"""
import ml_collections

from configs.vp import cifar10_ddpmpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ddpmpp_continuous.get_config()
  config.training.sde = "subvpsde"
  return config
