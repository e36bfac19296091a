r"""NCSN on CIFAR-10 with NCSNv2 techniques 1, 2, 4 and 5: the noise levels, step size and EMA.

    python main.py --config configs/ve/ncsn/cifar10_1245.py \
        --workdir runs/ve_ncsn_cifar10_1245 --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.ve.ncsn import cifar10_124


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_124.get_config()
  config.model.ema_rate = 0.999
  return config
