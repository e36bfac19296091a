r"""NCSN on CelebA with NCSNv2 techniques 1, 2 and 4: the noise levels and Langevin step size.

sigma_max 90, 500 geometrically spaced levels, and 5 Langevin steps per level at snr 0.128.

    python main.py --config configs/ve/ncsn/celeba_124.py \
        --workdir runs/ve_ncsn_celeba_124 --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.ve.ncsn import celeba


def get_config() -> ml_collections.ConfigDict:
  config = celeba.get_config()
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.128
  config.model.sigma_max = 90.
  config.model.num_scales = 500
  return config
