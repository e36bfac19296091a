r"""NCSN on CIFAR-10 with NCSNv2 technique 5 only: an exponential moving average of the weights.

    python main.py --config configs/ve/ncsn/cifar10_5.py \
        --workdir runs/ve_ncsn_cifar10_5 --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.ve.ncsn import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.model.ema_rate = 0.999
  return config
