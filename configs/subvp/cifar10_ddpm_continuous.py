r"""The DDPM U-Net on CIFAR-10 with the sub-VP SDE in continuous time ("DDPM cont. (sub-VP)").

configs/vp/ddpm/cifar10_continuous.py with the sub-VP SDE.

    python main.py --config configs/subvp/cifar10_ddpm_continuous.py \
        --workdir runs/subvp_cifar10_ddpm_continuous --mode train

Expected (reference README): FID 3.56 with the probability-flow ODE; 3.05 bits/dim on
dequantized test images.
"""
import ml_collections

from configs.vp.ddpm import cifar10_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_continuous.get_config()
  config.training.sde = "subvpsde"
  return config
