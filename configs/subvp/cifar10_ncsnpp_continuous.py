r"""NCSN++ on CIFAR-10 with the sub-VP SDE, continuous time.

configs/vp/cifar10_ncsnpp_continuous.py with the sub-VP SDE.

    python main.py --config configs/subvp/cifar10_ncsnpp_continuous.py \
        --workdir runs/subvp_cifar10_ncsnpp_continuous --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.vp import cifar10_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.sde = "subvpsde"
  return config
