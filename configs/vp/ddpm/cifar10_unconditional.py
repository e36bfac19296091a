r"""DDPM on CIFAR-10 with a network that is not told the time step (NCSNv2 technique 3).

    python main.py --config configs/vp/ddpm/cifar10_unconditional.py \
        --workdir runs/vp_ddpm_cifar10_unconditional --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.vp.ddpm import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.model.conditional = False
  return config
