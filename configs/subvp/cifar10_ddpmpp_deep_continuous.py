r"""DDPM++ cont. deep on CIFAR-10 with the sub-VP SDE: 8 residual blocks per resolution, 950k steps.

configs/vp/cifar10_ddpmpp_deep_continuous.py with the sub-VP SDE.

    python main.py --config configs/subvp/cifar10_ddpmpp_deep_continuous.py \
        --workdir runs/subvp_cifar10_ddpmpp_deep_continuous --mode train

Expected: FID 2.41, Inception score 9.57 (50k samples); FID 2.92 with the probability-flow ODE;
2.99 bits/dim on dequantized test images, the paper's best likelihood.
"""
import ml_collections

from configs.vp import cifar10_ddpmpp_deep_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ddpmpp_deep_continuous.get_config()
  config.training.sde = "subvpsde"
  return config
