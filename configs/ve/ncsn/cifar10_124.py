r"""NCSN on CIFAR-10 with NCSNv2 techniques 1, 2 and 4: the noise levels and Langevin step size.

sigma_max 50 (about the largest distance between training images), 232 geometrically spaced
levels, and 5 Langevin steps per level at snr 0.176.

    python main.py --config configs/ve/ncsn/cifar10_124.py \
        --workdir runs/ve_ncsn_cifar10_124 --mode train

Expected: no published number for this configuration.
"""
import ml_collections

from configs.ve.ncsn import cifar10


def get_config() -> ml_collections.ConfigDict:
  config = cifar10.get_config()
  config.sampling.n_steps_each = 5
  config.sampling.snr = 0.176
  config.model.sigma_max = 50.
  config.model.num_scales = 232
  return config
