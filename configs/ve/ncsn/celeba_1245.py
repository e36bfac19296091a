r"""NCSN on CelebA with NCSNv2 techniques 1, 2, 4 and 5: the noise levels, step size and EMA.

    python main.py --config configs/ve/ncsn/celeba_1245.py \
        --workdir runs/ve_ncsn_celeba_1245 --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.ve.ncsn import celeba_124


def get_config() -> ml_collections.ConfigDict:
  config = celeba_124.get_config()
  config.model.ema_rate = 0.999
  return config
