"""NCSN on CelebA with NCSNv2 technique 5 only: an exponential moving average of the weights.

    python main.py --config configs/ve/ncsn/celeba_5.py --workdir runs/ve_ncsn_celeba_5 --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.ve.ncsn import celeba


def get_config() -> ml_collections.ConfigDict:
  config = celeba.get_config()
  config.model.ema_rate = 0.999
  return config
